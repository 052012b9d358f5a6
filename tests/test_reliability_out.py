"""Issue 11, the output side: nothing medtune did not write is replaced (finding 1), a study or training
``out`` has one writer (4), variant names cannot make two steps share a directory (3), files keep
the user's umask (13), and the smaller ones of 15 (stats writes nothing, dry runs check data paths,
non-finite config numbers, loading bars under --no-progress).

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

from medtune import atomic
from medtune.config import load_config, validate
from medtune.demo import demo_data_dir
from medtune.errors import ConfigError, MedtuneError

from conftest import make_random_adapter

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


# --- finding 1: an output replaces only what medtune wrote -----------------------------------------


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
    with atomic.staging_dir(out, "merge") as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic.staging_dir(out, "merge") as tmp:
        (tmp / "weights").write_text("new, half written")
        raise RuntimeError("killed")
    assert (out / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- finding 13: atomic writes keep the umask ------------------------------------------------------


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
