"""A finished study stays finished: its saved study.yaml reproduces it, a moved copy is still done, and a
step that is stale says which setting changed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from medtune.cli import main
from medtune.demo import demo_data_dir
from medtune.study import run as study_run

from conftest import FEATURE_STUDY
from test_study import executed

ROW = re.compile(r"^│\s*(\S+)\s*│\s*(\w+)\s*│\s*(.*?)\s*│$")


def write_study(proj: Path, tiny_llama: Path, **variant_train) -> Path:
    """A one-variant study in ``proj`` (its data copied beside it, paths relative), written as ``proj/study.yaml``."""
    cfg = yaml.safe_load(FEATURE_STUDY.read_text())
    cfg["data"]["data_root"] = cfg["evaluation"]["data_root"] = "data"
    cfg.update({"model": {"spec": str(tiny_llama)}, "out": "runs/s", "progress": False,
                "variants": [{"name": "lora", **({"train": variant_train} if variant_train else {})}]})
    cfg["averaging"].update({"alphas": [0.0, 1.0], "methods": {}})
    cfg["train"].update({"max_steps": 2, "save_every": 0})
    if not (proj / "data").is_dir():
        shutil.copytree(demo_data_dir(), proj / "data")
    path = proj / ("study.yaml" if not variant_train else "changed.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def plan(capsys, *args: str) -> dict[str, tuple[str, str]]:
    """``medtune study ARGS --dry-run``: step -> (state, note)."""
    capsys.readouterr()
    main(["study", *args, "--dry-run"])
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        m = ROW.match(line)
        if m and m.group(1) != "step":
            rows[m.group(1)] = (m.group(2), m.group(3))
    assert rows, "no plan printed"
    return rows


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the plan table on one line per step
    # `study` with progress off sets this for the processes it starts: kept from leaking into later tests
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory) -> Path:
    """A finished one-variant study: the project directory holding study.yaml, data/ and runs/s."""
    proj = tmp_path_factory.mktemp("proj")
    write_study(proj, tiny_llama)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        mp.setenv("COLUMNS", "400")
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        main(["study", "study.yaml"])
    return proj


def test_saved_study_file_reproduces_the_finished_study_from_any_directory(finished, tmp_path, monkeypatch, capsys):
    """OUT/study.yaml (report.md's reproduce command) finds every step done, run from any directory, and
    running it runs nothing but the report and saves the same file again."""
    saved = finished / "runs" / "s" / "study.yaml"
    before = saved.read_text()
    monkeypatch.chdir(tmp_path)
    rows = plan(capsys, str(saved))
    assert {name: state for name, (state, _) in rows.items() if name != "report"} == \
        {"eval/base": "done", "train/lora": "done", "eval/lora": "done", "sweep/lora": "done"}, rows
    calls = executed(monkeypatch)
    main(["study", str(saved)])
    assert calls == ["report"]
    assert saved.read_text() == before
    md = (finished / "runs" / "s" / "report" / "report.md").read_text()
    assert f"medtune study {saved}" in md  # the command as it was run: here, from another directory


def test_moved_study_is_still_done_and_retrains_nothing(finished, tmp_path, monkeypatch, capsys):
    """A study copied elsewhere with its config and data is done there: by its config, by its saved
    study.yaml (which now names the moved directory), and `--only` runs nothing but the part's report."""
    moved = tmp_path / "elsewhere" / "p"
    shutil.copytree(finished, moved)
    monkeypatch.chdir(moved)
    rows = plan(capsys, "study.yaml")
    assert {state for state, _ in rows.values()} == {"done"}, rows
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    main(["study", str(moved / "runs" / "s" / "study.yaml"), "--dry-run"])
    text = "".join(capsys.readouterr().out.split())  # the title wraps at the table's width
    assert f"→{moved / 'runs' / 's'}" in text and "stale" not in text and str(finished) not in text
    monkeypatch.chdir(moved)
    calls = executed(monkeypatch)
    main(["study", "study.yaml", "--only", "lora"])
    assert calls == ["parts/lora/report"]  # a part writes its own report


def test_a_stale_step_names_the_setting_that_changed(finished, tiny_llama, monkeypatch, capsys):
    """A changed learning rate: train/lora is stale and says `learning_rate: 0.001 → 0.002`; the steps
    that read it say which input step changed; the base evaluation stays done."""
    monkeypatch.chdir(finished)
    rows = plan(capsys, str(write_study(finished, tiny_llama, learning_rate=0.002)))
    assert rows["eval/base"][0] == "done"
    state, note = rows["train/lora"]
    assert state == "stale" and "learning_rate: 0.001 → 0.002" in note, rows
    assert rows["eval/lora"] == ("stale", "an input step changed: train/lora")


def test_changed_data_file_makes_the_training_step_stale_and_names_the_file(finished, tmp_path, monkeypatch, capsys):
    """Data files count by their content: an edited text file makes training on it (replay) and scoring on it
    (ppl_general) stale, each naming the file."""
    moved = tmp_path / "p"
    shutil.copytree(finished, moved)
    with (moved / "data" / "general_demo.txt").open("a") as f:
        f.write("\nOne more general sentence about rivers and the sea.\n")
    monkeypatch.chdir(moved)
    rows = plan(capsys, "study.yaml")
    for step in ("train/lora", "eval/base"):
        assert rows[step][0] == "stale" and "reads.general_demo.txt: " in rows[step][1], rows


def test_state_from_an_older_medtune_says_there_is_no_record_of_its_settings(finished, tmp_path, monkeypatch, capsys):
    """A step state file without the recorded settings (an older medtune) is stale with a note that says so."""
    moved = tmp_path / "p"
    shutil.copytree(finished, moved)
    state_file = moved / "runs" / "s" / "eval" / "base" / ".medtune-step.json"
    state = json.loads(state_file.read_text())
    state.pop("basis", None)
    state["fingerprint"] = "0123456789abcdef"
    state_file.write_text(json.dumps(state))
    monkeypatch.chdir(moved)
    rows = plan(capsys, "study.yaml")
    assert rows["eval/base"] == ("stale", "settings changed (no record of the earlier settings)"), rows


def test_running_a_stale_step_again_says_why(finished, tmp_path, monkeypatch, capsys):
    """The run's "running again" line names the changed setting."""
    moved = tmp_path / "p"
    shutil.copytree(finished, moved)
    cfg = yaml.safe_load((moved / "study.yaml").read_text())
    cfg["averaging"]["retain"] = 0.5
    (moved / "study.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(moved)
    capsys.readouterr()
    main(["study", "study.yaml"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"sweep/lora — running again · retain: 0\.98 → 0\.5", text), text


def test_a_study_finished_by_an_older_medtune_is_still_done_and_its_state_is_upgraded(finished, tmp_path, monkeypatch,
                                                                                      capsys):
    """State files an older medtune wrote (its fingerprint: the configs as they were, absolute paths
    included; no basis) count as done when nothing changed, and the next run records their basis."""
    import hashlib

    from medtune.config import load_config

    moved = tmp_path / "p"
    shutil.copytree(finished, moved)
    monkeypatch.chdir(moved)
    cfg = load_config(study_run.StudyRunConfig, "study.yaml")
    cfg.base_dir = str(moved.resolve())
    old: dict[str, str] = {}
    for step in study_run._plan(cfg, Path(cfg.out)):
        # the configs as they were: without `device`, which stages took later
        dump = step.config.model_dump(mode="json", exclude={"progress", "resume", "device"}) if step.config else None
        text = json.dumps({"kind": step.kind, "config": dump, "deps": [old[d] for d in step.deps]}, sort_keys=True)
        old[step.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = moved / "runs" / "s" / step.name / ".medtune-step.json"
        state = json.loads(path.read_text())
        state.pop("basis")
        path.write_text(json.dumps({**state, "fingerprint": old[step.name]}))
    assert {state for state, _ in plan(capsys, "study.yaml").values()} == {"done"}
    calls = executed(monkeypatch)
    main(["study", "study.yaml"])
    assert calls == ["report"]
    assert "basis" in json.loads((moved / "runs" / "s" / "train" / "lora" / ".medtune-step.json").read_text())
    assert {state for state, _ in plan(capsys, "study.yaml").values()} == {"done"}


def test_saved_study_file_leaves_an_unset_tokenizer_unset(tiny_llama, tmp_path, monkeypatch):
    """Unset, data.tokenizer is the model's own, also in the reloaded saved file; a tokenizer given is kept."""
    from medtune.config import load_config
    from medtune.study.config import StudyConfig

    monkeypatch.chdir(tmp_path)
    for given in (None, "smollm2-135m"):
        cfg = load_config(study_run.StudyRunConfig, write_study(tmp_path, tiny_llama),
                          {"data.tokenizer": given} if given else {})
        cfg.base_dir = str(tmp_path)
        saved = yaml.safe_load(cfg.saved_file())
        assert saved["data"].get("tokenizer") == given
        again = StudyConfig.model_validate({**saved, "base_dir": str(tmp_path / "runs" / "s")})
        assert again.train_config(again.variants[0], tmp_path).data.tokenizer == given or str(tiny_llama)
        assert again.root(again.data.data_root) == tmp_path / "data"


def _as_if_written_without(moved: Path, cfg, dropped: set[str]) -> None:
    """Rewrite every step's state as a medtune without the training settings ``dropped`` would have: its basis
    without them, its fingerprint that basis's, and each later step's ``deps.`` entries those fingerprints."""
    from medtune.study import fingerprint

    fps: dict[str, str] = {}
    for step in study_run._plan(cfg, Path(cfg.out)):
        path = moved / "runs" / "s" / step.name / ".medtune-step.json"
        state = json.loads(path.read_text())
        basis = {k: (fps.get(k.removeprefix("deps."), v) if k.startswith("deps.") else v)
                 for k, v in state["basis"].items() if not (step.kind == "train" and k in dropped)}
        fps[step.name] = fingerprint.digest(basis)
        path.write_text(json.dumps({**state, "basis": basis, "fingerprint": fps[step.name]}))


@pytest.mark.parametrize("dropped, done", [({"eval_every", "eval_limit", "eval_tasks"}, True), ({"learning_rate"}, False)])
def test_settings_added_since_a_step_ran_keep_it_done_when_at_their_default(finished, tmp_path, monkeypatch, capsys,
                                                                             dropped, done):
    """A finished study whose state files predate some training settings (validation curves here) is still done
    when the new settings are at their defaults -- nothing reruns, not the training, not what depends on it --
    and stale when a setting it recorded has changed (here: one it did not record that is not at its default)."""
    from medtune.config import load_config

    moved = tmp_path / "p"
    shutil.copytree(finished, moved)
    monkeypatch.chdir(moved)
    cfg = load_config(study_run.StudyRunConfig, "study.yaml")
    cfg.base_dir = str(moved.resolve())
    _as_if_written_without(moved, cfg, dropped)
    rows = plan(capsys, "study.yaml")
    if done:
        assert {state for state, _ in rows.values()} == {"done"}, rows
        calls = executed(monkeypatch)
        main(["study", "study.yaml"])
        assert calls == ["report"]
        assert {state for state, _ in plan(capsys, "study.yaml").values()} == {"done"}
    else:
        assert rows["train/lora"][0] == "stale" and "learning_rate: (unset) → 0.001" in rows["train/lora"][1], rows
