"""Non-finite weights, corrupt checkpoints, corrupt or mismatched adapters.

Each test breaks an artifact the way a crash, a diverged run or a wrong copy would, and checks that
medtune stops with a clear error naming the file (and tensor or field), writes nothing, or — for
checkpoints — falls back to the newest intact one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medtune import models, outdir
from medtune.config import ModelConfig
from medtune.errors import MedtuneError, ModelError
from medtune.finite import NonFiniteError, check_finite

from conftest import make_random_adapter

FIXTURES = Path(__file__).parent / "fixtures"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@pytest.fixture()
def adapter(tiny_llama, tmp_path) -> Path:
    return make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.05)


def poison(file: Path, value: float = float("nan"), key_part: str = "lora_B") -> str:
    """Put one non-finite value into the first tensor whose name contains ``key_part``; return its name."""
    tensors = load_file(str(file))
    name = sorted(k for k in tensors if key_part in k)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = value
    save_file(tensors, str(file), metadata={"format": "pt"})
    return name


def eval_cfg(tiny_llama: Path, tmp_path: Path, **kw):
    from medtune.evaluate.run import EvalConfig

    return EvalConfig.model_validate({"model": {"spec": str(tiny_llama)}, "tasks": "pubmedqa", "data_root": str(FIXTURES),
                                      "out": str(tmp_path / "ev"), "progress": False, **kw})


def merge_cfg(tiny_llama: Path, tuned: Path, out: Path, **kw):
    from medtune.merge.run import MergeConfig

    return MergeConfig(base=ModelConfig(spec=str(tiny_llama), **kw), tuned=[str(tuned)], alpha=0.5, out=str(out))


# ---------------------------------------------------------------- non-finite weights


def test_check_finite_names_the_first_bad_tensor_and_its_source():
    good = {"a": torch.ones(3), "ids": torch.arange(3)}
    check_finite(good, "x.safetensors")
    bad = {**good, "b": torch.tensor([1.0, float("nan"), float("inf"), 2.0])}
    with pytest.raises(NonFiniteError, match=r"x\.safetensors: tensor 'b' has non-finite values \(1 NaN, 1 inf of 4\)"):
        check_finite(bad, "x.safetensors")
    with pytest.raises(NonFiniteError, match=r"shard-2: tensor 'b'"):
        check_finite(bad.items(), lambda name: "shard-2" if name == "b" else "shard-1")


def test_check_finite_looks_at_every_chunk(monkeypatch):
    from medtune import finite

    monkeypatch.setattr(finite, "CHUNK_ELEMENTS", 4)
    t = torch.zeros(10)
    t[9] = float("-inf")  # in the last, partial chunk
    with pytest.raises(NonFiniteError, match="0 NaN, 1 inf of 10"):
        check_finite({"t": t}, "src")


def test_eval_refuses_an_adapter_with_a_nan_tensor(tiny_llama, adapter, tmp_path):
    """The issue's repro: eval --adapter with one NaN printed acc 33.3 and exit 0."""
    from medtune.evaluate.run import evaluate

    name = poison(adapter / ADAPTER_WEIGHTS)
    with pytest.raises(NonFiniteError, match=rf"{ADAPTER_WEIGHTS}: tensor '{name}' has non-finite values \(1 NaN"):
        evaluate(eval_cfg(tiny_llama, tmp_path, adapter=str(adapter)))
    assert not (tmp_path / "ev" / "results.json").exists()


def test_eval_cli_stops_on_a_nan_adapter_with_one_message(tiny_llama, adapter, tmp_path):
    poison(adapter / ADAPTER_WEIGHTS)
    proc = subprocess.run([sys.executable, "-m", "medtune", "eval", "--model.spec", str(tiny_llama), "--adapter", str(adapter),
                           "--tasks", "pubmedqa", "--data-root", str(FIXTURES), "--out", str(tmp_path / "ev"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "non-finite" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ev" / "results.json").exists()


def test_a_model_with_an_inf_weight_is_refused_on_load_naming_tensor_and_file(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    name = poison(broken / "model.safetensors", float("inf"), key_part="mlp.up_proj")
    with pytest.raises(NonFiniteError, match=rf"broken/model\.safetensors: tensor '{name}'.*1 inf"):
        models.load_model(str(broken))


def test_a_nan_log_likelihood_is_never_scored(tiny_llama, tmp_path):
    """A model that goes NaN after loading (past the weight check): the scorer names the task and item."""
    from medtune.evaluate.run import score_model

    model = models.load_model(str(tiny_llama))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(MedtuneError, match=r"task pubmedqa, item \S+: choice 0 has log-likelihood nan"):
        score_model(model, models.load_tokenizer(str(tiny_llama)), eval_cfg(tiny_llama, tmp_path))


def test_lora_merge_refuses_a_nan_adapter_and_writes_nothing(tiny_llama, adapter, tmp_path):
    from medtune.merge.run import merge

    name = poison(adapter / ADAPTER_WEIGHTS)
    with pytest.raises(NonFiniteError, match=rf"tensor '{name}'"):
        merge(merge_cfg(tiny_llama, adapter, tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_streamed_merge_names_the_input_file_with_the_nan(tiny_llama, tmp_path):
    from medtune.merge.run import merge

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_llama, tuned)
    name = poison(tuned / "model.safetensors", key_part="self_attn.v_proj")
    with pytest.raises(NonFiniteError, match=rf"tuned/model\.safetensors: tensor '{name}'"):
        merge(merge_cfg(tiny_llama, tuned, tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_chat_refuses_a_nan_adapter(tiny_llama, adapter):
    from medtune.chat import ChatConfig, load

    poison(adapter / ADAPTER_WEIGHTS)
    with pytest.raises(NonFiniteError):
        load(ChatConfig.model_validate({"model": {"spec": str(tiny_llama)}, "adapter": str(adapter)}))


def test_sweep_refuses_a_full_tuned_checkpoint_with_a_nan(tiny_llama, tmp_path):
    from medtune.merge.sweep import SweepConfig, _averager

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_llama, tuned)
    name = poison(tuned / "model.safetensors", key_part="embed_tokens")
    with pytest.raises(NonFiniteError, match=rf"tuned: tensor '{name}'"):
        _averager(SweepConfig(base=ModelConfig(spec=str(tiny_llama)), tuned=str(tuned)))


# ---------------------------------------------------------------- corrupt or mismatched adapters


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def edit_config(adapter: Path, **changes) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


def to_pickle(adapter: Path) -> None:
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    torch.save(weights, adapter / "adapter_model.bin")
    (adapter / ADAPTER_WEIGHTS).unlink()


def wrong_rank(adapter: Path) -> None:
    edit_config(adapter, r=8)


def unknown_target(adapter: Path) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    edit_config(adapter, target_modules=cfg["target_modules"] + ["model.layers.0.self_attn.qkv_proj"])


def untargeted_tensors(adapter: Path) -> None:
    edit_config(adapter, target_modules=["q_proj", "v_proj"])  # the file also has k_proj, o_proj, mlp tensors


BREAKAGES = {
    "truncated weights": (lambda a: truncate(a / ADAPTER_WEIGHTS), rf"{ADAPTER_WEIGHTS}: cannot read the adapter weights.*truncated"),
    "invalid JSON config": (lambda a: (a / "adapter_config.json").write_text('{"r": 4,\n "peft_type": "LORA",'),
                            r"adapter_config\.json, line 2: not valid JSON"),
    "non-integer rank": (lambda a: edit_config(a, r="four"), r"adapter_config\.json, field 'r'"),
    "wrong rank": (wrong_rank, r"has shape \(4, \d+\), but .*adapter_config\.json says rank r=8"),
    "unknown target module": (unknown_target, r"adapter_config\.json, field 'target_modules': 'model\.layers\.0\.self_attn\.qkv_proj' matches no module"),
    "tensors the config does not target": (untargeted_tensors, r"adapter tensors on '.*', which .*target_modules.*does not cover"),
    "pickle only": (to_pickle, r"adapter_model\.bin: the adapter's weights are pickled.*--allow-pickle"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_adapter_is_refused_by_eval_naming_the_file(tiny_llama, adapter, tmp_path, breakage):
    from medtune.evaluate.run import evaluate

    breaker, message = BREAKAGES[breakage]
    breaker(adapter)
    with pytest.raises(ModelError, match=message):
        evaluate(eval_cfg(tiny_llama, tmp_path, adapter=str(adapter)))
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_adapter_is_refused_by_merge_before_any_output(tiny_llama, adapter, tmp_path, breakage):
    from medtune.merge.run import merge

    breaker, message = BREAKAGES[breakage]
    breaker(adapter)
    with pytest.raises(ModelError, match=message):
        merge(merge_cfg(tiny_llama, adapter, tmp_path / "m"))
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".tmp-m-*")), "no staging directory left behind"


def test_a_pickled_adapter_loads_when_allowed(tiny_llama, adapter, tmp_path):
    """--allow-pickle is the explicit way in: eval scores it, merge writes safetensors (no pickle copied)."""
    from medtune.evaluate.run import evaluate
    from medtune.merge.run import merge

    reference = merge(merge_cfg(tiny_llama, adapter, tmp_path / "ref"))
    to_pickle(adapter)
    evaluate(eval_cfg(tiny_llama, tmp_path, adapter=str(adapter), model={"spec": str(tiny_llama), "allow_pickle": True}))
    assert (tmp_path / "ev" / "results.json").is_file()
    out = merge(merge_cfg(tiny_llama, adapter, tmp_path / "m", allow_pickle=True))
    assert not (out / "adapter_model.bin").exists()
    got, want = load_file(str(out / ADAPTER_WEIGHTS)), load_file(str(reference / ADAPTER_WEIGHTS))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_an_intact_adapter_still_passes_every_check(tiny_llama, adapter):
    from medtune.lora_adapter import check_fits, read_adapter

    a = read_adapter(adapter)
    assert len(a.modules()) == 14 and a.config["r"] == 4
    check_fits(a, models.meta_model(models.resolve(str(tiny_llama))))


# ---------------------------------------------------------------- corrupt checkpoints


class Interrupted(Exception):
    """Stands in for a kill right after a checkpoint is written."""


def train_cfg(tiny_llama: Path, out: Path):
    from medtune.train.config import TrainConfig

    from test_train import config

    return TrainConfig.model_validate(config(tiny_llama, out))  # 12 steps, a checkpoint every 3, keep 2


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """An uninterrupted 12-step run, and the same run stopped right after its step-6 checkpoint."""
    from medtune.train import checkpoint
    from medtune.train.run import train

    root = tmp_path_factory.mktemp("runs")
    train(train_cfg(tiny_llama, root / "ref"))
    real = checkpoint.save

    def save_then_stop(out, step, *a, **k):
        path = real(out, step, *a, **k)
        if step == 6:
            raise Interrupted
        return path

    mp = pytest.MonkeyPatch()
    mp.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted):
        train(train_cfg(tiny_llama, root / "stopped"))
    mp.undo()
    assert [p.name for p in checkpoint.checkpoint_dirs(root / "stopped")] == ["checkpoint-3", "checkpoint-6"]
    return root


def _set_tensor_shape(file: Path) -> None:
    tensors = load_file(str(file))
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    save_file(tensors, str(file))


def _set_optimizer_shape(file: Path) -> None:
    opt = torch.load(file, weights_only=True)
    state = opt["state"][0]
    state["exp_avg"] = torch.zeros(state["exp_avg"].shape[0], state["exp_avg"].shape[1] + 1)
    torch.save(opt, file)


class _RunsCode:
    """A pickle that would call print() on load: the kind of file weights_only refuses."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


CHECKPOINT_DAMAGE = {
    "truncated weights": (lambda c: truncate(c / ADAPTER_WEIGHTS), r"adapter_model\.safetensors is unreadable"),
    "bad medtune state": (lambda c: (c / "medtune_state.json").write_text('{"step": 6, "hist'), r"medtune_state\.json is unreadable"),
    "bad engine state": (lambda c: (c / "trainer_state.json").write_text('{"global_step": 6, "lo'), r"trainer_state\.json is unreadable"),
    "missing optimizer file": (lambda c: (c / "optimizer.pt").unlink(), r"optimizer\.pt is missing"),
    "truncated optimizer file": (lambda c: truncate(c / "optimizer.pt"), r"optimizer\.pt is unreadable"),
    "optimizer pickle that runs code": (lambda c: torch.save(_RunsCode(), c / "optimizer.pt"), r"optimizer\.pt is unreadable \(UnpicklingError"),
    "missing RNG state": (lambda c: (c / "rng_state.pth").unlink(), r"rng_state\.pth is missing"),
    "shape mismatch": (lambda c: _set_tensor_shape(c / ADAPTER_WEIGHTS), r"adapter_model\.safetensors tensor '.*' has shape"),
    "optimizer shape mismatch": (lambda c: _set_optimizer_shape(c / "optimizer.pt"), r"optimizer\.pt tensor '.*' has shape"),
    "NaN weights": (lambda c: poison(c / ADAPTER_WEIGHTS, key_part="lora_A"), r"adapter_model\.safetensors: tensor .* non-finite"),
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_a_corrupt_checkpoint_falls_back_to_the_newest_intact_one(tiny_llama, runs, tmp_path, capsys, damage):
    """Resume skips the damaged step-6 checkpoint (saying why), resumes from step 3, and ends bit-identical."""
    from medtune.train.run import train

    out = tmp_path / "run"
    shutil.copytree(runs / "stopped", out)
    breaker, reason = CHECKPOINT_DAMAGE[damage]
    breaker(out / "checkpoints" / "checkpoint-6")
    capsys.readouterr()
    train(train_cfg(tiny_llama, out).model_copy(update={"resume": True}))
    captured = capsys.readouterr()
    err = captured.err
    assert re.search(rf"checkpoint \S*checkpoint-6 is unusable: {reason}", err), err
    assert re.search(r"resuming from \S*checkpoint-3 \(step 3\), the newest intact checkpoint", err), err
    assert "unpickled code ran" not in captured.out + err
    assert (out / "checkpoints" / "corrupt-checkpoint-6").is_dir(), "the bad checkpoint is kept, out of the way"
    ref = load_file(str(runs / "ref" / "model" / ADAPTER_WEIGHTS))
    got = load_file(str(out / "model" / ADAPTER_WEIGHTS))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    history = lambda d: [h["loss"] for h in json.loads((d / "curves.json").read_text())["history"]]
    assert history(out) == history(runs / "ref")


def test_no_intact_checkpoint_is_a_clear_error(tiny_llama, runs, tmp_path):
    from medtune.train.checkpoint import CheckpointError
    from medtune.train.run import train

    out = tmp_path / "run"
    shutil.copytree(runs / "stopped", out)
    truncate(out / "checkpoints" / "checkpoint-6" / ADAPTER_WEIGHTS)
    (out / "checkpoints" / "checkpoint-3" / "scheduler.pt").write_text("[")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from \(checkpoint-6: adapter_model\.safetensors "
                                              r"is unreadable.*checkpoint-3: scheduler\.pt is unreadable"):
        train(train_cfg(tiny_llama, out).model_copy(update={"resume": True}))
    assert not (out / "model").exists()


def fsync_log(monkeypatch) -> list[tuple[str, str]]:
    """Record ("fsync", path) and ("rename", source) events in order."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *a, **k):
        events.append(("rename", str(Path(src).resolve())))
        return real_rename(src, dst, *a, **k)

    def replace(src, dst, *a, **k):
        events.append(("rename", str(Path(src).resolve())))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return events


def synced_before_rename(events: list[tuple[str, str]], staging: Path) -> set[str]:
    """Paths under ``staging`` that were fsynced before ``staging`` itself was renamed."""
    staging = staging.resolve()
    done: set[str] = set()
    for kind, path in events:
        if kind == "rename" and path == str(staging):
            return done
        if kind == "fsync" and (path == str(staging) or path.startswith(f"{staging}/")):
            done.add(path)
    raise AssertionError(f"{staging} was never renamed")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_checkpoint_files_and_directory_are_fsynced_before_the_rename(tiny_llama, tmp_path, monkeypatch):
    """Every file the engine writes into a checkpoint, and the directory, are on disk before its name exists."""
    from medtune.train import checkpoint
    from medtune.train.run import train

    out = tmp_path / "run"
    cfg = train_cfg(tiny_llama, out).model_copy(update={"max_steps": 2, "save_every": 1})
    events = fsync_log(monkeypatch)
    train(cfg)
    monkeypatch.undo()
    target = out / "checkpoints" / "checkpoint-1"
    staging = out / "checkpoints" / ".staging" / "checkpoint-1"
    synced = synced_before_rename(events, staging)
    want = {str(staging.resolve() / f.relative_to(target)) for f in target.rglob("*")} | {str(staging.resolve())}
    assert len(want) > 6 and want <= synced, sorted(want - synced)
    assert ("fsync", str((out / "checkpoints").resolve())) in events[events.index(("rename", str(staging.resolve()))):]
    assert checkpoint.validate(target, 1, None, None)["step"] == 1  # and what was written reads back


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_staging_dir_fsyncs_what_libraries_wrote_before_the_rename(tmp_path, monkeypatch):
    from medtune import atomic

    events = fsync_log(monkeypatch)
    with outdir.staging_dir(tmp_path / "art", "merge") as tmp:
        save_file({"w": torch.ones(2)}, str(tmp / "model.safetensors"))  # safetensors does not fsync
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.txt").write_text("x")
    synced = synced_before_rename(events, tmp)
    assert {str(tmp.resolve() / "model.safetensors"), str(tmp.resolve() / "sub" / "x.txt"), str(tmp.resolve())} <= synced
    assert events[-1] == ("fsync", str(tmp_path.resolve())), "the parent directory is synced after the rename"
