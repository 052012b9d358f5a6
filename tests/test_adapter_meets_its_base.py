"""An adapter meets its own base, and chat reads what it is given.

Two tiny bases of the same shapes (seeds 0 and 1) and an adapter trained by ``medtune train`` on
base 0: applying it on base 1 is refused by eval, merge, chat and sweep (naming both bases and the
flag), allowed with a warning under the flag, and silent on base 0 (also when base 0 has moved).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from medtune.config import ModelConfig
from medtune.errors import ModelError
from medtune.lora_adapter import BASE_FILE, OtherBaseWarning

from conftest import make_tiny_llama

FIXTURES = Path(__file__).parent / "fixtures"
OTHER_WEIGHTS = r"trained on base .*base0.*base1.* has other weights.*allow-other-base"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bases")
    return make_tiny_llama(root / "base0", seed=0), make_tiny_llama(root / "base1", seed=1)


@pytest.fixture(scope="module")
def trained(bases, tmp_path_factory) -> Path:
    """The model/ directory of a 2-step LoRA run of ``medtune train`` on base 0."""
    from medtune.train.config import TrainConfig
    from medtune.train.run import train

    out = tmp_path_factory.mktemp("run") / "lora"
    cfg = {"model": {"spec": str(bases[0])},
           "data": {"data_root": str(FIXTURES), "tokenizer": str(bases[0]), "block_size": 32,
                    "train": [{"adapter": "medmcqa", "path": "medmcqa/dev.json"}]},
           "micro_batch_size": 2, "grad_accum": 1, "max_steps": 2, "save_every": 0, "out": str(out), "progress": False}
    return train(TrainConfig.model_validate(cfg)) / "model"


@pytest.fixture()
def adapter(trained, tmp_path) -> Path:
    """A fresh copy of the trained adapter (a test may edit it)."""
    return Path(shutil.copytree(trained, tmp_path / "adapter"))


def eval_cfg(base: Path, adapter: Path, out: Path, **model):
    from medtune.evaluate.run import EvalConfig

    return EvalConfig.model_validate({"model": {"spec": str(base), **model}, "adapter": str(adapter), "tasks": "pubmedqa",
                                      "data_root": str(FIXTURES), "limit": 2, "out": str(out), "progress": False})


def merge_cfg(base: Path, adapter: Path, out: Path, **model):
    from medtune.merge.run import MergeConfig

    return MergeConfig(base=ModelConfig(spec=str(base), **model), tuned=[str(adapter)], alpha=0.5, out=str(out))


def chat_cfg(base: Path, adapter: Path, **model):
    from medtune.chat import ChatConfig

    return ChatConfig.model_validate({"model": {"spec": str(base), **model}, "adapter": str(adapter)})


def other_base_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, OtherBaseWarning)]


def test_training_records_the_base_an_adapter_was_trained_on(trained, bases):
    """The run's model/ names its base (spec and directory) and a fingerprint of its weights."""
    record = json.loads((trained / BASE_FILE).read_text())
    assert record["spec"] == str(bases[0]) and Path(record["path"]) == bases[0]
    assert record["weights"], "a fingerprint of the base weights"


def test_an_adapter_is_refused_on_a_base_with_other_weights(bases, adapter, tmp_path):
    """eval, merge, chat and sweep stop with one message naming both bases and the override flag."""
    from medtune.chat import load
    from medtune.evaluate.run import evaluate
    from medtune.merge.run import merge
    from medtune.merge.sweep import SweepConfig, _averager

    with pytest.raises(ModelError, match=OTHER_WEIGHTS):
        evaluate(eval_cfg(bases[1], adapter, tmp_path / "ev"))
    assert not (tmp_path / "ev").exists()
    with pytest.raises(ModelError, match=OTHER_WEIGHTS):
        merge(merge_cfg(bases[1], adapter, tmp_path / "m"))
    assert not (tmp_path / "m").exists()
    with pytest.raises(ModelError, match=OTHER_WEIGHTS):
        load(chat_cfg(bases[1], adapter))
    with pytest.raises(ModelError, match=OTHER_WEIGHTS):
        _averager(SweepConfig(base=ModelConfig(spec=str(bases[1])), tuned=str(adapter)))


def test_eval_cli_refuses_another_base_with_one_line(bases, adapter, tmp_path):
    """The CLI exits 2 with the message and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "medtune", "eval", "--model.spec", str(bases[1]), "--adapter", str(adapter),
                           "--tasks", "pubmedqa", "--data-root", str(FIXTURES), "--limit", "2",
                           "--out", str(tmp_path / "ev"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--model.allow-other-base" in proc.stderr and "Traceback" not in proc.stderr


def test_the_override_flag_warns_naming_both_bases_and_runs(bases, adapter, tmp_path):
    """With allow_other_base the adapter is applied on base 1, with a warning naming both bases."""
    from medtune.chat import load
    from medtune.evaluate.run import evaluate
    from medtune.merge.run import merge

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(eval_cfg(bases[1], adapter, tmp_path / "ev", allow_other_base=True))
        merge(merge_cfg(bases[1], adapter, tmp_path / "m", allow_other_base=True))
        load(chat_cfg(bases[1], adapter, allow_other_base=True))
    said = other_base_warnings(caught)
    assert len(said) == 3 and all("base0" in s and "base1" in s for s in said), said
    assert (tmp_path / "ev" / "results.json").is_file() and (tmp_path / "m" / "merge_provenance.json").is_file()


def test_the_adapters_own_base_loads_without_a_warning_even_moved(bases, adapter, tmp_path):
    """Base 0 at its own path, or copied elsewhere (same weights, other path): no warning, no error."""
    from medtune.chat import load
    from medtune.evaluate.run import evaluate

    moved = Path(shutil.copytree(bases[0], tmp_path / "elsewhere"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(eval_cfg(bases[0], adapter, tmp_path / "ev"))
        load(chat_cfg(moved, adapter))
    assert other_base_warnings(caught) == []


def test_an_adapter_without_provenance_is_compared_by_name_only(bases, adapter, tmp_path):
    """A Hub-style adapter (no medtune record): another base's name is a warning, and it runs."""
    from medtune.chat import load

    (adapter / BASE_FILE).unlink()
    with pytest.warns(OtherBaseWarning, match=r"base0.*base1"):
        load(chat_cfg(bases[1], adapter))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(chat_cfg(bases[0], adapter))
    assert other_base_warnings(caught) == []


# ---------------------------------------------------------------- chat input


def run_chat(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtune", "chat", *args], input=stdin, capture_output=True, timeout=120)


def test_chat_survives_a_line_that_is_not_utf8(tiny_llama):
    """A non-UTF-8 byte on stdin does not end the session: every line gets its answer."""
    proc = run_chat("--model.spec", str(tiny_llama), "--max-new-tokens", "4",
                    stdin=b"first question\nbad \xff\xfe byte\nthird question\n")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) == 3


def test_chat_alpha_without_an_adapter_is_a_config_error(tiny_llama):
    """--alpha only means something with --adapter: without one it is refused (exit 2), not ignored."""
    from medtune.chat import ChatConfig
    from medtune.config import validate
    from medtune.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha.*adapter"):
        validate(ChatConfig, {"model": {"spec": str(tiny_llama)}, "alpha": 0.5}, "chat")
    proc = run_chat("--model.spec", str(tiny_llama), "--alpha", "0.5", "--prompt", "hi", stdin=b"")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "adapter" in err and "Traceback" not in err, err[-2000:]


def test_the_weights_fingerprint_survives_a_resharded_bf16_copy_but_not_other_weights(bases, tmp_path):
    """Same values (bf16-rounded, sharded, elsewhere) give the same fingerprint; another seed does not."""
    import torch
    from transformers import AutoModelForCausalLM

    from medtune import models
    from medtune.lora_adapter import weights_fingerprint

    copy = tmp_path / "bf16-shards"
    AutoModelForCausalLM.from_pretrained(str(bases[0]), dtype=torch.bfloat16).save_pretrained(str(copy), max_shard_size="20KB")
    assert len(list(copy.glob("*.safetensors"))) > 1
    fp = {p: weights_fingerprint(models.resolve(str(p))) for p in (bases[0], copy, bases[1])}
    assert fp[bases[0]] == fp[copy] != fp[bases[1]]
