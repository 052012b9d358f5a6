"""Merge parameters, interrupted merges, empty perplexity and disk errors stop with one line, exit 2.

Each case runs through the command line (``medtune.cli.main``) where the promise is about what a
user sees: exit status 2, one ``error:`` line naming the key, file or task, and no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from medtune import atomic, outdir
from medtune.cli import DISK_ERRORS, main
from medtune.config import validate
from medtune.errors import ConfigError

from conftest import FEATURE_STUDY, make_random_adapter

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_adapter(tiny_llama, tmp_path_factory.mktemp("adapter") / "a", seed=1, std=0.05)


def _yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _exit_2_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2, return its one error line (no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2, err
    last = err.splitlines()[-1]  # after what the stage printed while it ran
    assert last.startswith("error: ") and "Traceback" not in err, err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    return last


# --- a perplexity task that scores no token ----------------------------------------------


def _ppl_eval(tiny_llama: Path, tmp_path: Path, text: str) -> Path:
    (tmp_path / "one.txt").write_text(text)
    return _yaml(tmp_path / "eval.yaml", {
        "model": {"spec": str(tiny_llama)}, "tasks": "ppl_general", "data_root": str(tmp_path),
        "out": str(tmp_path / "ev"), "progress": False,
        "task_sources": {"ppl_general": {"adapter": "text", "path": "one.txt"}}})


def test_a_perplexity_task_that_scores_no_token_stops_before_writing_results(tiny_llama, tmp_path, capsys):
    """A perplexity task whose documents are one token in all is an error naming the task and source, exit 2."""
    err = _exit_2_one_line(["eval", str(_ppl_eval(tiny_llama, tmp_path, "a\n"))], capsys)
    assert "ppl_general" in err and "one.txt" in err and "scores 0 tokens" in err, err
    assert not (tmp_path / "ev").exists(), "no results.json, no output directory"


def test_a_perplexity_task_of_two_tokens_scores_one(tiny_llama, tmp_path):
    """The smallest scorable stream (two tokens) is scored: the check refuses nothing that has a token to score."""
    main(["eval", str(_ppl_eval(tiny_llama, tmp_path, "a\n\nb\n"))])
    result = json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]["ppl_general"]
    assert result["tokens"] >= 1 and result["perplexity"]["value"] > 1


# --- merge parameters are typed and checked once ----------------------------------------


BAD_PARAMS = [
    pytest.param({"method": "hma", "alpha": 0.5, "ratios": []}, ["hma", "ratios"], id="hma-ratios-empty"),
    pytest.param({"method": "hma", "params": {"alpha": 0.5, "ratios": 0.5}}, ["hma", "ratios", "list"],
                 id="hma-ratios-number"),
    pytest.param({"method": "ties", "params": {"density": "0.5"}}, ["ties", "density", "'0.5'", "without quotes"],
                 id="ties-density-quoted"),
    pytest.param({"method": "linear", "params": {"alpha": "0.5"}}, ["linear", "alpha", "without quotes"],
                 id="linear-alpha-quoted"),
    pytest.param({"method": "dare_ties", "params": {"seed": "abc"}}, ["dare_ties", "seed", "'abc'", "integer"],
                 id="dare-seed-text"),
    pytest.param({"method": "dare_linear", "params": {"seed": 1.5}}, ["dare_linear", "seed", "integer"],
                 id="dare-seed-fraction"),
    pytest.param({"method": "ties", "params": {"density": 0}}, ["ties", "density", "outside"], id="ties-density-0"),
    pytest.param({"method": "ties", "params": {"density": True}}, ["ties", "density"], id="ties-density-bool"),
    pytest.param({"method": "linear", "params": {"alpha": 1.5}}, ["linear", "alpha", "outside"], id="alpha-above-1"),
    pytest.param({"method": "hma", "params": {"alpha": 0.5, "ratios": [0.5, 1.5, -0.5]}}, ["hma", "ratios.1", "outside"],
                 id="hma-ratio-above-1"),
    pytest.param({"method": "ties", "params": {"densty": 0.5}}, ["ties", "'densty'", "valid: density, weight"],
                 id="unknown-key"),
]


@pytest.mark.parametrize(("cfg", "named"), BAD_PARAMS)
def test_bad_merge_parameters_are_one_line_naming_method_and_key(tiny_llama, adapter, tmp_path, capsys, cfg, named):
    """A merge parameter of the wrong type, out of range, or unknown: exit 2, one line naming method and key."""
    path = _yaml(tmp_path / "merge.yaml", {"base": {"spec": str(tiny_llama)}, "tuned": [str(adapter)],
                                           "out": str(tmp_path / "m"), **cfg})
    err = _exit_2_one_line(["merge", str(path)], capsys)
    for part in named:
        assert part in err, (part, err)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".tmp-m-*"))


def _sweep(grid: dict[str, Any]) -> dict[str, Any]:
    return {"base": {"spec": "b"}, "tuned": "t", "methods": grid}


@pytest.mark.parametrize(("grid", "named"), [
    ({"ties": {"density": ["0.5"]}}, ["ties", "density", "without quotes"]),
    ({"dare_ties": {"seed": [0, "abc"]}}, ["dare_ties", "seed", "integer"]),
    ({"hma": {"alpha": [0.5], "ratios": [[]]}}, ["hma", "ratios"]),
    ({"slerp": {"alpha": [0.5, 2]}}, ["slerp", "alpha", "outside"]),
])
def test_sweep_and_study_grids_check_every_point_when_the_config_is_read(tmp_path, grid, named):
    """A bad value anywhere in a sweep's or a study's method grid is a config error before any work."""
    from medtune.merge.sweep import SweepConfig
    from medtune.study.run import StudyRunConfig

    with pytest.raises(ConfigError) as err:
        validate(SweepConfig, _sweep(grid), "sweep.yaml")
    for part in named:
        assert part in str(err.value), (part, str(err.value))
    study = yaml.safe_load(FEATURE_STUDY.read_text())
    study["averaging"]["methods"] = grid
    with pytest.raises(ConfigError) as err:
        validate(StudyRunConfig, study, "study.yaml")
    assert "averaging" in str(err.value) and all(part in str(err.value) for part in named), str(err.value)


def test_good_merge_parameters_keep_their_values():
    """Whole numbers for float parameters are accepted and stay as given (a sweep point's identity)."""
    from medtune.merge import methods as M

    assert M.resolve_params("ties", {"density": 1, "weight": 2}) == {"density": 1, "weight": 2}
    assert M.resolve_params("hma", {"alpha": 0.5, "ratios": [0, 1, 0.5]})["ratios"] == [0.0, 1.0, 0.5]
    assert M.resolve_params("dare_linear", {"seed": 3}) == {"density": 0.5, "weight": 1.0, "seed": 3}


# --- a killed merge's staging directory is removed by the next one ------------------------

_SLOW_MERGE = """
import sys, time
from pathlib import Path
from medtune.merge import run as R
real = R._lora_exact
def slow(*args, **kwargs):
    real(*args, **kwargs)  # the merged adapter is in the staging directory: the kill finds it half done
    Path(sys.argv[2]).write_text("merging")
    time.sleep(300)
R._lora_exact = slow
from medtune.cli import DISK_ERRORS, main
main(["merge", sys.argv[1]])
"""


def test_a_merge_killed_by_sigterm_leaves_a_staging_directory_the_next_merge_removes(tiny_llama, adapter, tmp_path):
    """SIGTERM mid-merge: the output is untouched, and the next merge of that output removes the leftovers."""
    out = tmp_path / "m"
    cfg = _yaml(tmp_path / "merge.yaml", {"base": {"spec": str(tiny_llama)}, "tuned": [str(adapter)], "alpha": 0.5,
                                          "out": str(out)})
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MERGE, str(cfg), str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):  # imports torch first: up to a minute on a busy CPU
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    if not ready.exists():
        proc.kill()
        pytest.fail(f"the merge did not start: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    leftover = list(tmp_path.glob(".tmp-m-*"))
    assert len(leftover) == 1 and any(leftover[0].glob("*.safetensors")), "the killed merge's partial output"
    assert not out.exists()
    foreign = tmp_path / ".tmp-m-mine"  # the same name pattern, not a medtune staging directory: left alone
    foreign.mkdir()
    main(["merge", str(cfg)])
    assert not leftover[0].exists(), "the dead merge's staging directory is removed"
    assert foreign.is_dir() and (out / "merge_provenance.json").is_file()
    assert not (out / outdir.STAGING_MARK).exists(), "the writer mark is not part of the output"


def test_a_live_writers_staging_directory_is_left_alone(tmp_path):
    """A staging directory whose writer is alive (or on another host) is not touched by a second writer."""
    target = tmp_path / "out"
    live = tmp_path / ".tmp-out-live"
    live.mkdir()
    (live / outdir.STAGING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    elsewhere = tmp_path / ".tmp-out-elsewhere"
    elsewhere.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (elsewhere / outdir.STAGING_MARK).write_text(json.dumps({"pid": int(dead.stdout), "host": "another-host"}))
    gone = tmp_path / ".tmp-out-gone"
    gone.mkdir()
    (gone / outdir.STAGING_MARK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with outdir.staging_dir(target, "merge") as tmp:
        (tmp / "x").write_text("x")
    assert live.is_dir() and elsewhere.is_dir() and not gone.exists()
    assert sorted(p.name for p in target.iterdir()) == [".medtune-artifact.json", "x"]


# --- a full disk or a read-only file system is one line, exit 2 ---------------------------


def _fail_writing(monkeypatch: pytest.MonkeyPatch, name: str, code: int, filename: bool = True) -> None:
    """Make medtune's atomic write of the file called ``name`` fail as the file system would."""
    real = atomic.write_text

    def write_text(path: str | Path, text: str) -> None:
        if Path(path).name == name:
            raise OSError(code, os.strerror(code), *([str(path)] if filename else []))
        real(path, text)

    monkeypatch.setattr(atomic, "write_text", write_text)


def _data_build(tiny_llama: Path, tmp_path: Path) -> Path:
    return _yaml(tmp_path / "data.yaml", {
        "data_root": str(FIXTURES), "tokenizer": str(tiny_llama), "block_size": 32, "out": str(tmp_path / "d"),
        "train": [{"adapter": "medmcqa", "path": "medmcqa/dev.json"}]})


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES])
def test_data_build_on_a_full_or_read_only_disk_is_one_line(tiny_llama, tmp_path, monkeypatch, capsys, code):
    """A write that fails for lack of space or permission names the file and the cause; nothing is left half-written."""
    _fail_writing(monkeypatch, "manifest.json", code)
    err = _exit_2_one_line(["data", "build", str(_data_build(tiny_llama, tmp_path))], capsys)
    assert err == f"error: {DISK_ERRORS[code]} {tmp_path / 'd' / 'manifest.json'}: {os.strerror(code)}", err
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".tmp-d-*"))


def test_eval_on_a_full_disk_is_one_line_naming_results_json(tiny_llama, tmp_path, monkeypatch, capsys):
    """eval on a full disk: one line naming results.json and the cause, exit 2."""
    cfg = _yaml(tmp_path / "eval.yaml", {"model": {"spec": str(tiny_llama)}, "tasks": "medmcqa", "limit": 4,
                                         "data_root": str(FIXTURES), "out": str(tmp_path / "ev"), "progress": False})
    _fail_writing(monkeypatch, "results.json", errno.ENOSPC)
    err = _exit_2_one_line(["eval", str(cfg)], capsys)
    assert err == f"error: cannot write {tmp_path / 'ev' / 'results.json'}: No space left on device", err


def test_a_write_error_without_a_file_name_is_given_the_file_it_was_writing(tiny_llama, tmp_path, monkeypatch, capsys):
    """ENOSPC from a write (which names no file) is reported with the file medtune was writing."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".manifest.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    err = _exit_2_one_line(["data", "build", str(_data_build(tiny_llama, tmp_path))], capsys)
    assert err == f"error: cannot write {tmp_path / 'd' / 'manifest.json'}: No space left on device", err


def test_other_os_errors_and_the_debug_switch_keep_the_traceback(tiny_llama, tmp_path, monkeypatch):
    """Only disk-space and permission errors become one line; other OS errors, or MEDTUNE_DEBUG=1, raise."""
    cfg = _data_build(tiny_llama, tmp_path)
    _fail_writing(monkeypatch, "manifest.json", errno.EIO, filename=False)
    with pytest.raises(OSError, match="Input/output error"):
        main(["data", "build", str(cfg)])
    _fail_writing(monkeypatch, "manifest.json", errno.ENOSPC)
    monkeypatch.setenv("MEDTUNE_DEBUG", "1")
    with pytest.raises(OSError, match="No space left on device"):
        main(["data", "build", str(cfg)])


# --- FSDP1 is refused before accelerate is asked to set it up ----------------------------

FSDP1_LAUNCH_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
                    "FSDP_CPU_RAM_EFFICIENT_LOADING": "true", "FSDP_SYNC_MODULE_STATES": "true"}
"""What ``accelerate launch --use_fsdp --fsdp_version 1`` (or a config with fsdp_version: 1) sets."""


def test_fsdp1_is_refused_before_accelerate_sets_it_up(tiny_llama, tmp_path, monkeypatch, capsys):
    """Launched for FSDP1, train stops with medtune's reason (exit 2) before accelerate's Accelerator is built."""
    import accelerate
    import transformers.trainer  # noqa: F401  (imported first: it binds the real Accelerator, not the stand-in below)

    def crash(*args: Any, **kwargs: Any) -> None:  # what accelerate does with FSDP1 on a machine without a GPU
        raise RuntimeError("There are currently no available devices found")

    monkeypatch.setattr(accelerate, "Accelerator", crash)
    for var, value in FSDP1_LAUNCH_ENV.items():
        monkeypatch.setenv(var, value)
    cfg = _yaml(tmp_path / "train.yaml", {"model": {"spec": str(tiny_llama)}, "out": str(tmp_path / "t"),
                                          "progress": False, "data": {"tokenizer": str(tiny_llama)}})
    err = _exit_2_one_line(["train", str(cfg)], capsys)
    assert "FSDP version 1 is not supported" in err and "fsdp_version: 2" in err, err
    assert not (tmp_path / "t").exists()
    monkeypatch.delenv("FSDP_VERSION")  # accelerate's default version is 1
    assert "FSDP version 1" in _exit_2_one_line(["train", str(cfg)], capsys)


def test_fsdp1_launched_on_cpu_is_refused_by_medtune_not_by_accelerate(tiny_llama, tmp_path):
    """The real launch (2 CPU processes): medtune's one-line refusal, not accelerate's device error."""
    import shutil

    cfg = _yaml(tmp_path / "train.yaml", {"model": {"spec": str(tiny_llama)}, "out": str(tmp_path / "t"),
                                          "progress": False, "data": {"tokenizer": str(tiny_llama)}})
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run([accelerate, "launch", "--use_fsdp", "--fsdp_version", "1", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "medtune", "train", str(cfg)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "error: FSDP version 1 is not supported" in proc.stderr, proc.stderr[-3000:]
    assert "no available devices" not in proc.stderr, proc.stderr[-3000:]
