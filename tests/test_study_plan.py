"""The study's plan is computed in one place: the run, the dry run and the config's validator see the same
steps; steps not known yet are typed records; each kind of step runs through one table; a step's state is a
record with load / save; only the study layout builds step paths."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from medtune.cli import main
from medtune.config import load_config
from medtune.demo import demo_data_dir
from medtune.errors import MedtuneError
from medtune.study import plan as P
from medtune.study import run as study_run
from medtune.study import steps as S
from medtune.study.layout import StepState, StudyLayout

from test_study import executed

SRC = Path(__file__).resolve().parents[1] / "src" / "medtune"
ROW = re.compile(r"^│\s*(\S.*?)\s*│\s*(\w+)\s*│\s*(.*?)\s*│$")


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the plan table on one line per step
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def demo(tiny_llama: Path, out: Path, **changes) -> study_run.StudyRunConfig:
    """The demo study on the tiny model, with a second variant so that --only has parts to run."""
    cfg = load_config(study_run.StudyRunConfig, demo_data_dir() / "demo-study.yaml",
                      {"model.spec": str(tiny_llama), "out": str(out), "progress": False, "train.max_steps": 2,
                       "train.save_every": 0,
                       "variants": [{"name": "lora"}, {"name": "lora-fast", "train": {"learning_rate": 0.01}}],
                       **changes})
    cfg.base_dir = str(demo_data_dir())
    return cfg


def dry_run(capsys, cfg: study_run.StudyRunConfig) -> list[tuple[str, str, str]]:
    """The dry run's table of ``cfg``: (step, state, note) per row, in order."""
    capsys.readouterr()
    study_run.study(cfg.model_copy(update={"dry_run": True}))
    rows = [m.groups() for line in capsys.readouterr().out.splitlines() if (m := ROW.match(line))]
    rows = [r for r in rows if r[0] != "step"]
    assert rows, "no plan printed"
    return rows


@pytest.mark.parametrize("only", ["lora-fast", "lora,lora-fast", None])
def test_the_dry_run_lists_the_steps_the_run_executes(tiny_llama, tmp_path, capsys, monkeypatch, only):
    """Before a run, the dry run lists every step the run executes (those after a sweep as waiting on it); after
    it, exactly the executed steps, in their order; the validator owns each of them."""
    cfg = demo(tiny_llama, tmp_path / "s", only=only)
    before = dry_run(capsys, cfg)
    calls = executed(monkeypatch)
    study_run.study(cfg)
    after = dry_run(capsys, cfg)
    assert [name for name, _, _ in after] == calls and {state for _, state, _ in after} == {"done"}
    known = [name for name, state, _ in before if state != "wait"]
    waited = {name for row, state, _ in before if state == "wait" for name in row.split(", ")}
    assert {state for name, state, _ in before if name in known} == {"run"}
    assert known == [c for c in calls if c in known]  # the known steps run in the listed order
    assert set(calls) - set(known) <= waited  # a step not known before ran in the place of a waiting row
    layout = study_run.layout_of(study_run.restricted(cfg), cfg.out_dir())
    assert calls[-1] == layout.report_step()
    owned = {d for d, _ in cfg.step_owners()}
    assert set(calls[:-1]) <= owned


def test_the_run_the_dry_run_and_the_validator_ask_the_one_plan(tiny_llama, tmp_path, capsys, monkeypatch):
    """The validator, the dry run and the run all take their steps from ``plan.plan`` (a step it adds is
    validated, listed and run)."""
    real = P.plan
    asked: list[str] = []

    def plan(cfg, layout, points):
        asked.append(type(points).__name__)
        return real(cfg, layout, points)

    monkeypatch.setattr(P, "plan", plan)
    cfg = demo(tiny_llama, tmp_path / "s", variants=[{"name": "lora"}])
    assert asked and set(asked) == {"StandIn"}  # the validator
    asked.clear()
    rows = dry_run(capsys, cfg)
    assert "SweptPoints" in asked
    assert [r[0] for r in rows][:5] == ["eval/base", "train/lora", "eval/lora", "sweep/lora",
                                        "merge/lora, eval/lora-averaged"]


def test_a_waiting_step_is_a_typed_record(tiny_llama, tmp_path):
    """Steps that wait for a sweep's selected point are a frozen record naming them and the sweep, not a string."""
    cfg = demo(tiny_llama, tmp_path / "s", **{"evaluation.generate": True})
    items = S.built_plan(cfg, StudyLayout(tmp_path / "s"))
    waiting = [i for i in items if isinstance(i, P.Waiting)]
    assert not any(isinstance(i, str) for i in items)
    assert [(w.names, w.after) for w in waiting] == [(("merge/lora", "eval/lora-averaged"), "sweep/lora"),
                                                     (("merge/lora-fast", "eval/lora-fast-averaged"), "sweep/lora-fast")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        waiting[0].after = "sweep/other"  # type: ignore[misc]
    assert items[-1].kind == "report" and items[-1].deps == [i.name for i in items[:-1] if isinstance(i, S.Step)]


def test_an_unknown_step_kind_fails_with_the_valid_names():
    """The step-kind table names its kinds when asked for one it does not have."""
    with pytest.raises(MedtuneError, match="unknown step kind 'soup' .*eval, train, sweep, merge, report"):
        S.step_kind("soup")
    assert set(S.KINDS) == {"eval", "train", "sweep", "merge", "report"}
    assert S.step_kind("train").resumes and S.step_kind("sweep").resumes and S.step_kind("eval").resumes
    assert not S.step_kind("merge").resumes and not S.step_kind("report").resumes


def test_step_state_round_trips_and_reads_the_older_files(tmp_path):
    """A step's state file loads back to the record that saved it, in the same JSON as before; one without a
    basis (an older medtune) loads with basis None; a step that never started has none."""
    layout = StudyLayout(tmp_path)
    path = layout.state_file("train/lora")
    assert StepState.load(path) is None
    started = StepState("train/lora", "abc", "started", basis={"kind": "train"}, started="2024-01-01T00:00:00+0000")
    started.save(path)
    assert StepState.load(path) == started
    assert list(json.loads(path.read_text())) == ["step", "fingerprint", "state", "started", "basis"]
    done = StepState("train/lora", "abc", "done", basis={"kind": "train"}, seconds=1.5, finished="2024-01-01T00:01:00+0000")
    done.save(path)
    assert StepState.load(path) == done
    assert list(json.loads(path.read_text())) == ["step", "fingerprint", "state", "seconds", "finished", "basis"]
    path.write_text(json.dumps({"step": "train/lora", "fingerprint": "old", "state": "done", "seconds": 2.0}))
    old = StepState.load(path)
    assert old is not None and old.basis is None and old.fingerprint == "old" and old.seconds == 2.0


STEP_PATH = re.compile(r"""/\s*(?:\w+\.)?name\b|["'](eval|eval-gen|train|sweep|merge|parts)/|\bSTATE\b""")
"""A path joined with a step's name, a step name spelled out in a string, or the state file's name used."""


def test_only_the_study_layout_builds_step_paths():
    """No study module but layout.py joins a step name onto the study directory, spells a step name or names the
    state file: the layout is the one place that knows where a step writes."""
    found = []
    for path in sorted((SRC / "study").glob("*.py")):
        if path.name == "layout.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if STEP_PATH.search(code):
                found.append(f"{path.name}:{i}: {line.strip()}")
    assert found == []


class Cut(Exception):
    """A sitting's end (the process killed or stopped mid-step)."""


def test_a_resumed_step_counts_the_time_of_the_sitting_that_was_cut_off(tiny_llama, tmp_path, monkeypatch):
    """A running step records its time so far every HEARTBEAT_S; a resumed step adds it to its own, so the
    report's run time of a study run in sittings is its whole time, with the number of sittings."""
    import time

    from medtune.report.render import _run_time
    from medtune.study.fingerprint import digest
    from medtune.study.gather import step_times

    cfg = demo(tiny_llama, tmp_path / "s")
    out = Path(cfg.out)
    step = next(s for s in S.static_plan(cfg, out) if s.kind == "train")
    basis = step.basis({d: "x" for d in step.deps}, out)
    monkeypatch.setattr(study_run, "HEARTBEAT_S", 0.05)

    path = StudyLayout(out).state_file(step.name)

    def run_for(seconds: float, cut: bool):
        def run(*a):
            if cut:  # until a beat has recorded 0.3 s: what the cut-off sitting leaves
                deadline = time.time() + 60
                while (st := StepState.load(path)) is None or (st.seconds or 0) < 0.3:
                    assert time.time() < deadline, "no heartbeat recorded the running step's time"
                    time.sleep(0.01)
                raise Cut
            time.sleep(seconds)

        monkeypatch.setitem(S.KINDS, "train", dataclasses.replace(S.KINDS["train"], run=run))

    run_for(0, cut=True)
    with pytest.raises(Cut):
        study_run._execute(step, out, cfg, basis, "run", digest(basis))
    first = StepState.load(path)
    assert first is not None and first.state == "started" and first.seconds >= 0.3 and first.sittings is None
    run_for(0.3, cut=False)
    study_run._execute(step, out, cfg, basis, "resume", digest(basis))
    done = StepState.load(path)
    assert done is not None and done.state == "done" and done.sittings == 2
    assert done.seconds >= first.seconds + 0.3
    times = step_times(StudyLayout(out))
    assert [(t.step, t.sittings) for t in times] == [(step.name, 2)]
    table = next(b for b in _run_time(times) if b[0] == "table")
    assert table[1][-1] == "sittings" and table[2][0][-1] == "2"

    run_for(0, cut=False)  # run again from the start (stale, or not resumable): its own time only
    study_run._execute(step, out, cfg, basis, "run", digest(basis))
    again = StepState.load(path)
    assert again is not None and again.sittings is None and again.seconds < done.seconds - 0.3
    assert "sittings" not in next(b for b in _run_time(step_times(StudyLayout(out))) if b[0] == "table")[1]
