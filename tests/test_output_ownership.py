"""The output side: nothing medtune did not write is replaced, a study or training ``out`` has one
writer, variant names cannot make two steps share a directory, files keep the user's umask, and
smaller ones (stats writes nothing, dry runs check data paths, non-finite config numbers, loading bars
under --no-progress).

Each test drives a stage's public entry (or the CLI) so that it fails on the code before the fix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medtune import atomic, outdir
from medtune.config import load_config, validate
from medtune.demo import demo_data_dir
from medtune.errors import ConfigError, MedtuneError

from conftest import FEATURE_STUDY, make_random_adapter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory) -> Path:
    return make_random_adapter(tiny_llama, tmp_path_factory.mktemp("adapter") / "a", seed=1, std=0.05)


def _merge(tiny_llama: Path, adapter: Path, out: Path) -> Path:
    from medtune.merge.run import MergeConfig, merge

    return merge(MergeConfig(base={"spec": str(tiny_llama)}, tuned=[str(adapter)], alpha=0.5, out=str(out)))


def _user_dir(path: Path) -> Path:
    """A directory of the user's: medtune must never delete or overwrite what is in it."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    (path / "results.json").write_text('{"mine": true}\n')
    return path


def _untouched(path: Path) -> bool:
    return (path / "notes.txt").read_text() == "mine\n" and json.loads((path / "results.json").read_text()) == {"mine": True}


# --- an output replaces only what medtune wrote -----------------------------------------


def test_merge_refuses_a_directory_it_did_not_write_and_keeps_its_files(tiny_llama, adapter, tmp_path):
    user = _user_dir(tmp_path / "mine")
    with pytest.raises(ConfigError, match=r"mine: exists and is not written by medtune") as err:
        _merge(tiny_llama, adapter, user)
    assert "choose another --out" in str(err.value)
    assert _untouched(user) and sorted(p.name for p in user.iterdir()) == ["notes.txt", "results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging directory left behind


def test_out_dot_and_the_directories_above_it_are_refused_on_the_command_line(tiny_llama, adapter, tmp_path,
                                                                              monkeypatch, capsys):
    from medtune.cli import main

    work = _user_dir(tmp_path / "work")
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(json.dumps({"base": {"spec": str(tiny_llama)}, "tuned": [str(adapter)], "alpha": 0.5}))
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(SystemExit) as code:
            main(["merge", str(cfg), "--out", out])
        assert code.value.code == 2
        assert "is the current directory or one above it" in capsys.readouterr().err
    assert _untouched(work) and (tmp_path / "merge.yaml").is_file()


def test_merge_replaces_its_own_output_and_outputs_of_earlier_versions(tiny_llama, adapter, tmp_path):
    out = tmp_path / "m"
    _merge(tiny_llama, adapter, out)
    marker = json.loads((out / ".medtune-artifact.json").read_text())
    assert marker["kind"] == "merge" and marker["medtune_version"] and marker["created"]
    (out / "stale.txt").write_text("from the first merge")
    _merge(tiny_llama, adapter, out)  # its own artifact: replaced as a whole
    assert not (out / "stale.txt").exists() and (out / "merge_provenance.json").is_file()
    (out / ".medtune-artifact.json").unlink()  # as written before the marker existed
    _merge(tiny_llama, adapter, out)
    assert (out / ".medtune-artifact.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    _merge(tiny_llama, adapter, empty)
    assert (empty / "merge_provenance.json").is_file()


def test_data_build_refuses_another_kind_of_artifact_before_any_work(tiny_llama, adapter, tmp_path):
    from medtune.data.build import DataConfig, build_command

    merged = _merge(tiny_llama, adapter, tmp_path / "m")
    before = sorted(p.name for p in merged.iterdir())
    cfg = load_config(DataConfig, demo_data_dir() / "demo-data.yaml", {"tokenizer": str(tiny_llama), "out": str(merged)})
    cfg.base_dir = str(demo_data_dir())
    with pytest.raises(ConfigError, match=r"m: exists and is a medtune merge artifact, not a data output"):
        build_command(cfg)
    assert sorted(p.name for p in merged.iterdir()) == before
    user = _user_dir(tmp_path / "mine")
    with pytest.raises(ConfigError, match="not written by medtune"):
        build_command(cfg.model_copy(update={"out": str(user)}))
    assert _untouched(user)


def test_train_eval_sweep_and_study_refuse_a_user_directory(tiny_llama, tmp_path):
    from medtune.evaluate.run import EvalConfig, evaluate
    from medtune.merge.sweep import SweepConfig, sweep
    from medtune.study.run import StudyRunConfig, study
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    user = _user_dir(tmp_path / "mine")
    model = {"spec": str(tiny_llama)}
    stages = [(train, TrainConfig(model=model, out=str(user))), (evaluate, EvalConfig(model=model, out=str(user))),
              (sweep, SweepConfig(base=model, tuned=str(tmp_path), out=str(user))),
              (study, load_config(StudyRunConfig, demo_data_dir() / "demo-study.yaml",
                                  {"model.spec": str(tiny_llama), "out": str(user)}))]
    for stage, cfg in stages:
        with pytest.raises(ConfigError, match="not written by medtune"):
            stage(cfg)
        assert _untouched(user) and sorted(p.name for p in user.iterdir()) == ["notes.txt", "results.json"], stage


def test_what_counts_as_a_medtune_artifact(tmp_path, monkeypatch):
    from medtune import outdir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="a-file: is a file"):
        outdir.check(tmp_path / "a-file", "eval")
    (tmp_path / "link").symlink_to(tmp_path / "a-file")
    with pytest.raises(ConfigError, match="link: is a symbolic link"):
        outdir.check(tmp_path / "link", "merge")
    outdir.check(tmp_path / "new" / "dir", "eval")  # not there yet: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    claimed = outdir.claim(tmp_path / "ev", "eval")
    outdir.check(claimed, "eval")
    with pytest.raises(ConfigError, match="is a medtune eval artifact, not a report output"):
        outdir.check(claimed, "report")
    # a study step directory (its state file written before the stage runs) is of its step's kind
    step = tmp_path / "study" / "merge" / "lora"
    atomic.write_json(step / ".medtune-step.json", {"step": "merge/lora", "fingerprint": "f", "state": "started"})
    outdir.check(step, "merge")
    with pytest.raises(ConfigError):
        outdir.check(step, "eval")
    # directories of earlier medtune versions, recognised by the provenance they carry
    old = {"data": ["manifest.json", "blocks.safetensors"], "eval": ["results.json", "predictions.jsonl"],
           "merge": ["merge_provenance.json"], "report": ["report.json"], "study": ["study.yaml"],
           "train": ["curves.json"]}
    for kind, files in old.items():
        d = tmp_path / f"old-{kind}"
        d.mkdir()
        for f in files:
            (d / f).write_text("{}")
        outdir.check(d, kind)
        with pytest.raises(ConfigError):
            outdir.check(d, "sweep")
    model = tmp_path / "old-train" / "model"  # a training run's model/ directory
    model.mkdir()
    (model / "adapter_config.json").write_text("{}")
    outdir.check(model, "model")
    with pytest.raises(ConfigError):
        outdir.check(tmp_path / "old-eval", "model")  # not inside a training run
    loose = tmp_path / "loose" / "model"
    loose.mkdir(parents=True)
    (loose / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not written by medtune"):
        outdir.check(loose, "model")


def test_a_failed_replacement_keeps_the_old_output(tmp_path):
    out = tmp_path / "m"
    with outdir.staging_dir(out, "merge") as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), outdir.staging_dir(out, "merge") as tmp:
        (tmp / "weights").write_text("new, half written")
        raise RuntimeError("killed")
    assert (out / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- atomic writes keep the umask ------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_files_and_output_directories_follow_the_umask(tiny_llama, adapter, tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic.write_text(tmp_path / "report.md", "# report\n")
        atomic.write_json(tmp_path / "results.json", {"acc": 1})
        merged = _merge(tiny_llama, adapter, tmp_path / "merged")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(tmp_path / "report.md") == mode(tmp_path / "results.json") == 0o666 & ~mask
    assert mode(merged) == 0o777 & ~mask
    written = ("mergekit.yaml", "merge_provenance.json", "adapter_model.safetensors", ".medtune-artifact.json")
    assert {mode(merged / f) for f in written} == {0o666 & ~mask}


# --- no two steps of a study share a directory ------------------------------------------


def _study(tiny_llama: Path, out: Path, **changes):
    from medtune.study.run import StudyRunConfig

    cfg = load_config(StudyRunConfig, FEATURE_STUDY,
                      {"model.spec": str(tiny_llama), "out": str(out), "progress": False, **changes})
    cfg.base_dir = str(demo_data_dir())
    return cfg


@pytest.mark.parametrize("names, best_of, shared, owners", [
    (["base"], [], "eval/base", ("variant 'base'", "the base model's evaluation")),
    (["lora", "lora-averaged"], [], "eval/lora-averaged", ("variant 'lora-averaged'", "averaged model of variant 'lora'")),
    (["lora", "lora-hma"], ["hma"], "eval/lora-hma", ("variant 'lora-hma'", "hma model of variant 'lora'")),
    (["lora-uniform", "lora"], ["uniform"], "merge/lora-uniform",
     ("the averaged model of variant 'lora-uniform'", "the uniform model of variant 'lora'")),
])
def test_variant_names_that_make_two_steps_share_a_directory_are_refused(tiny_llama, tmp_path, names, best_of,
                                                                         shared, owners):
    with pytest.raises(ConfigError, match=f"would both write the step directory {shared}") as err:
        _study(tiny_llama, tmp_path / "s", variants=[{"name": n} for n in names],
               **{"averaging.test_best_of": best_of})
    assert all(o in str(err.value) for o in owners) and "rename the variant" in str(err.value)


def test_variant_names_that_only_look_alike_are_accepted(tiny_llama, tmp_path):
    # "lora-uniform" meets lora's comparison point only when test_best_of asks for it; a variant not
    # swept has no averaged model to collide with
    for names, extra in ((["lora", "lora-uniform"], {}), (["lora", "lora-averaged"], {"averaging.variants": ["lora-averaged"]})):
        cfg = _study(tiny_llama, tmp_path / "s", variants=[{"name": n} for n in names], **extra)
        dirs = [d for d, _ in cfg.step_owners()]
        assert len(dirs) == len(set(dirs))


# --- one writer per study or training out ----------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from medtune.config import load_config
from medtune.demo import demo_data_dir
ready = Path(sys.argv[3])
def hold(*args, **kwargs):
    ready.write_text("holding")
    time.sleep(300)
if sys.argv[4] == "study":
    from medtune.study import run as R
    R._execute = hold
    cfg = load_config(R.StudyRunConfig, demo_data_dir() / "demo-study.yaml",
                      {"model.spec": sys.argv[1], "out": sys.argv[2], "progress": False})
    cfg.base_dir = str(demo_data_dir())
    R.study(cfg)
else:
    from medtune.train import run as R
    from medtune.train.config import TrainConfig
    R._data = hold
    R.train(TrainConfig(model={"spec": sys.argv[1]}, out=sys.argv[2], progress=False))
"""


class _GotPastTheLock(Exception):
    pass


def _hold_in_another_process(tiny_llama: Path, out: Path, what: str, tmp_path: Path) -> subprocess.Popen:
    ready = tmp_path / f"{what}-ready"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tiny_llama), str(out), str(ready), what],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):  # the holder imports torch and transformers first: up to a minute on a busy CPU
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    if not ready.exists():
        proc.kill()
        pytest.fail(f"the holding process did not start its {what}: {proc.communicate()[1][-2000:]}")
    return proc


@pytest.mark.parametrize("what", ["study", "train"])
def test_a_second_writer_is_refused_naming_the_pid_and_a_killed_ones_lock_is_taken_over(tiny_llama, tmp_path,
                                                                                         monkeypatch, capfd, what):
    from medtune.study import run as study_run
    from medtune.train import run as train_run
    from medtune.train.config import TrainConfig

    def got_past(*args, **kwargs):
        raise _GotPastTheLock

    out = tmp_path / "out"
    if what == "study":
        monkeypatch.setattr(study_run, "_execute", got_past)
        run, cfg = study_run.study, _study(tiny_llama, out)
    else:
        monkeypatch.setattr(train_run, "_data", got_past)
        run, cfg = train_run.train, TrainConfig(model={"spec": str(tiny_llama)}, out=str(out), progress=False)
    holder = _hold_in_another_process(tiny_llama, out, what, tmp_path)
    try:
        with pytest.raises(MedtuneError, match=rf"{out}: another medtune .* is writing here \(pid {holder.pid}, since "):
            run(cfg)
    finally:
        holder.kill()
        holder.wait()
    capfd.readouterr()
    with pytest.raises(_GotPastTheLock):  # the killed holder's lock is gone with it: taken over
        run(cfg)
    assert f"taking over the lock left by pid {holder.pid}" in capfd.readouterr().err
    with pytest.raises(_GotPastTheLock):  # and released again when the run ends (here: fails)
        run(cfg)
    assert "taking over" not in capfd.readouterr().err


# --- the smaller ones -------------------------------------------------------------------------


def test_data_stats_writes_nothing_and_prints_the_rejected_rows(tiny_llama, tmp_path, monkeypatch, capsys):
    from medtune.data.build import DataConfig, stats_command

    rows = (demo_data_dir() / "medqa_demo.jsonl").read_text().splitlines()[:3]
    src = tmp_path / "data" / "medqa.jsonl"
    src.parent.mkdir()
    src.write_text("\n".join([rows[0], '{"question": "no options"}', *rows[1:]]) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = DataConfig(train=[{"adapter": "medqa", "path": str(src)}], skip_invalid=True, tokenizer=str(tiny_llama))
    stats_command(cfg)
    assert list(work.iterdir()) == [] and sorted(p.name for p in src.parent.iterdir()) == ["medqa.jsonl"]
    printed = capsys.readouterr().out
    assert "Rejected rows: 1" in printed and f"{src}, line 2" in printed


def test_study_checks_that_its_data_paths_exist_in_a_dry_run_and_before_running(tiny_llama, tmp_path):
    from medtune.study.run import study

    cfg = _study(tiny_llama, tmp_path / "s", dry_run=True,
                 **{"evaluation.test_sources.medqa4": {"adapter": "medqa", "path": "gone/medqa.jsonl"},
                    "data.train": [{"adapter": "medmcqa", "path": "missing_train.jsonl"}]})
    for dry in (True, False):
        with pytest.raises(ConfigError) as err:
            study(cfg.model_copy(update={"dry_run": dry}))
        text = str(err.value)
        assert "gone/medqa.jsonl: file not found" in text and "eval/base (task medqa4)" in text
        assert "missing_train.jsonl: file not found" in text and "train/lora (data.train)" in text
    assert not (tmp_path / "s" / "eval").exists()  # nothing ran


def test_study_reads_its_sources_before_running_so_a_wrong_split_or_a_bad_row_stops_it_at_once(tiny_llama, tmp_path):
    # Paths that exist but do not read as configured: found when the step reading them ran, hours in, before.
    from medtune.study.run import study

    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    (mmlu / "anatomy_dev.csv").write_text("What is it?,a,b,c,d,A\n")  # a dev split only: a test source finds nothing
    medqa = tmp_path / "medqa.jsonl"
    medqa.write_text(json.dumps({"question": "Q?", "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
                                 "answer_idx": "A"}) + "\n" + json.dumps({"question": "Q2?", "options": {"A": "x"}}) + "\n")
    cfg = _study(tiny_llama, tmp_path / "s", dry_run=True,
                 **{"evaluation.tasks": ["medqa4", "mmlu_anatomy"],
                    "evaluation.test_sources.medqa4": {"adapter": "medqa", "path": str(medqa)},
                    "evaluation.test_sources.mmlu_anatomy": {"adapter": "mmlu", "path": str(mmlu)}})
    for dry in (True, False):
        with pytest.raises(ConfigError) as err:
            study(cfg.model_copy(update={"dry_run": dry}))
        text = str(err.value)
        assert "does not read" in text
        assert "no MMLU files *_test.csv" in text and "eval/base (task mmlu_anatomy)" in text
        assert f"{medqa}, line 2" in text and "eval/base (task medqa4)" in text
    assert not (tmp_path / "s" / "eval").exists()  # nothing ran
    # the same sources read as their split says: the study gets past the check (the dry run lists its plan)
    (mmlu / "anatomy_dev.csv").rename(mmlu / "anatomy_test.csv")
    medqa.write_text(medqa.read_text().splitlines()[0] + "\n")
    study(cfg)


@pytest.mark.parametrize("key, value", [("learning_rate", ".inf"), ("learning_rate", ".nan"),
                                        ("warmup_ratio", ".nan"), ("data.mix_temperature", ".inf"),
                                        ("lora.dropout", ".nan"), ("max_grad_norm", "-.inf")])
def test_config_numbers_must_be_finite(tmp_path, key, value):
    from medtune.train.config import TrainConfig

    parent, _, leaf = key.rpartition(".")
    text = f"{parent}:\n  {leaf}: {value}\n" if parent else f"{leaf}: {value}\n"
    (tmp_path / "train.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"train.yaml: {key}: Input should be a finite number"):
        load_config(TrainConfig, tmp_path / "train.yaml")


def test_a_study_variant_with_an_infinite_learning_rate_is_refused(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"variants\.0\.train\.learning_rate: Input should be a finite number"):
        _study(tiny_llama, tmp_path / "s", variants=[{"name": "lora", "train": {"learning_rate": float("inf")}}])


def test_no_progress_also_silences_the_weight_loading_bar(tiny_llama, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(json.dumps({"model": {"spec": str(tiny_llama)}, "tasks": "medqa4", "limit": 2,
                               "data_root": str(demo_data_dir()),
                               "task_sources": {"medqa4": {"adapter": "medqa", "path": "medqa_demo.jsonl"}}}))
    runs = {}
    for flag in ("--progress", "--no-progress"):
        done = subprocess.run([sys.executable, "-m", "medtune", "eval", str(cfg), flag, "--out", str(tmp_path / flag[2:])],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[flag] = done.stderr
    assert "Loading weights" in runs["--progress"]  # the bar this is about does show by default
    assert "Loading weights" not in runs["--no-progress"]


@pytest.mark.parametrize("changes", [{}, {"averaging.test_best_of": ["uniform", "hma"]}, {"evaluation.generate": True},
                                     {"averaging.variants": ["lora"]}])
def test_the_validator_names_the_same_step_directories_as_the_plan(tiny_llama, tmp_path, changes):
    """The config validator checks the step directories of the study's plan; they must be the directories
    the steps built from that plan write into."""
    from medtune.study import plan as P
    from medtune.study import steps
    from medtune.study.layout import StudyLayout

    cfg = _study(tiny_llama, tmp_path / "s", **changes)
    layout = StudyLayout(Path(cfg.out))
    built = steps.built_plan(cfg, layout, P.StandIn(tuple(cfg.swept)))
    assert sorted(d for d, _ in cfg.step_owners()) == sorted(s.name for s in built if isinstance(s, steps.Step))
    for s in built:
        if isinstance(s, steps.Step) and s.config is not None:
            assert Path(s.config.out) == layout.step_dir(s.name), s.name


def test_checkpoints_follow_the_umask(tiny_llama, tmp_path):
    """Checkpoints are staged by the trainer itself (not outdir.staging_dir): their files too get
    0666 less the umask, although safetensors writes 0600."""
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    fixtures = Path(__file__).parent / "fixtures"
    cfg = TrainConfig.model_validate({
        "model": {"spec": str(tiny_llama)},
        "data": {"data_root": str(fixtures), "tokenizer": str(tiny_llama), "block_size": 32,
                 "train": [{"adapter": "medmcqa", "path": "medmcqa/dev.json"}]},
        "micro_batch_size": 2, "max_steps": 3, "save_every": 2, "out": str(tmp_path / "run"), "progress": False})
    old = os.umask(0o027)
    try:
        train(cfg)
    finally:
        os.umask(old)
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    files = [p for p in ckpt.iterdir() if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o750
