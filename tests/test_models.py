"""Model specs: local dirs, Hub layout, GGUF cache atomicity, safety defaults, the embedded model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medtune import models
from medtune.errors import ModelError


def test_local_dir_loads_tiny_llama(tiny_llama):
    r = models.resolve(str(tiny_llama))
    assert r.kind == "local"
    model = models.load_model(r)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2


def test_pickled_weights_refused_unless_allowed(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    d = tmp_path / "pickled"
    shutil.copytree(tiny_llama, d)
    (d / "model.safetensors").unlink()
    torch.save(load_file(str(tiny_llama / "model.safetensors")), d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="--allow-pickle"):
        models.resolve(str(d))
    assert models.resolve(str(d), allow_pickle=True).kind == "local"
    loaded = models.load_model(str(d), allow_pickle=True)
    assert torch.equal(loaded.lm_head.weight, models.load_model(str(tiny_llama)).lm_head.weight)


def test_a_tokenizer_directory_without_weights_serves_the_tokenizer_not_the_model(tiny_llama, tmp_path):
    """Building data needs only the tokenizer: a directory of tokenizer files is enough for it, and
    still refused as a model."""
    d = tmp_path / "tok"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / f, d / f)
    tok = models.load_tokenizer(str(d))
    assert tok("the heart")["input_ids"] == models.load_tokenizer(str(tiny_llama))("the heart")["input_ids"]
    with pytest.raises(ModelError, match="no config.json"):
        models.load_model(str(d))
    (d / "tokenizer.json").unlink()
    (d / "tokenizer_config.json").unlink()
    with pytest.raises(ModelError, match="not a tokenizer directory"):
        models.load_tokenizer(str(d))


def test_hub_id_resolves_through_the_hub_cache_layout(tiny_llama, tmp_path, monkeypatch):
    """A Hub id loads from a Hub cache laid out as huggingface_hub writes it (offline here)."""
    cache = tmp_path / "hub"
    snap = cache / "models--medtune-test--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama, snap)
    (cache / "models--medtune-test--tiny-llama" / "refs").mkdir()
    (cache / "models--medtune-test--tiny-llama" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    r = models.resolve("medtune-test/tiny-llama")
    assert r.kind == "hub"
    model = models.load_model(r)
    ref = models.load_model(str(tiny_llama))
    assert torch.equal(model.model.embed_tokens.weight, ref.model.embed_tokens.weight)


def test_unknown_spec_says_what_is_valid():
    with pytest.raises(ModelError, match="smollm2-135m"):
        models.resolve("not-a-model")
    with pytest.raises(ModelError, match="no such GGUF"):
        models.resolve("/nonexistent/model.gguf")


def test_trust_remote_code_is_off_by_default(tiny_llama, monkeypatch):
    seen = {}
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    models.load_model(str(tiny_llama))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_interrupted_gguf_conversion_leaves_no_cache(tmp_path, monkeypatch, tiny_llama):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-not-really")
    target = tmp_path / "cache" / "m"

    def broken(src, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_gguf_cache(gguf, target)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir()], "the staging directory must be cleaned up"

    def works(src, out):
        for f in tiny_llama.iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr(models, "_convert_gguf", works)
    assert models.ensure_gguf_cache(gguf, target) == target
    prov = json.loads((target / "medtune_provenance.json").read_text())
    assert prov["gguf_size"] == len(b"GGUF-not-really")

    # A second call reuses the cache; a changed GGUF rebuilds it.
    monkeypatch.setattr(models, "_convert_gguf", broken)
    assert models.ensure_gguf_cache(gguf, target) == target
    gguf.write_bytes(b"GGUF-changed-size")
    with pytest.raises(KeyboardInterrupt):
        models.ensure_gguf_cache(gguf, target)
    assert (target / "medtune_provenance.json").exists(), "a failed rebuild keeps the old cache"


def test_the_same_gguf_installed_at_another_path_reuses_the_cache(tmp_path, monkeypatch, tiny_llama):
    """Two installations of the model package (a CI checkout's environment beside the user's) share the user
    cache: the same GGUF file at another path is the same cache, not a rebuild that replaces it under a running
    job; a file of the same name and size with other bytes is rebuilt."""
    converted = []

    def works(src, out):
        converted.append(src)
        for f in tiny_llama.iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr(models, "_convert_gguf", works)
    data = b"GGUF" + bytes(range(256)) * 20_000  # ~5 MB: the sampled digest reads its first, middle and last MiB
    one, two = tmp_path / "venv-a" / "m.gguf", tmp_path / "venv-b" / "m.gguf"
    for p in (one, two):
        p.parent.mkdir()
        p.write_bytes(data)
    target = tmp_path / "cache" / "m"
    models.ensure_gguf_cache(one, target)
    models.ensure_gguf_cache(two, target)
    models.ensure_gguf_cache(one, target)
    assert converted == [one]
    other = bytearray(data)
    other[len(data) // 2] ^= 1  # same name and size, one byte in the middle differs
    two.write_bytes(bytes(other))
    models.ensure_gguf_cache(two, target)
    assert converted == [one, two]


@pytest.mark.slow
def test_embedded_model_is_smollm2_135m():
    r = models.resolve("smollm2-135m")
    assert r.kind == "embedded"
    assert json.loads((Path(r.path) / "medtune_provenance.json").read_text())["cache_format"] == models.CACHE_FORMAT
    model = models.load_model(r)
    tok = models.load_tokenizer(r)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    ids = tok("The capital of France is", return_tensors="pt")
    outs = [tok.decode(model.generate(**ids, max_new_tokens=4, do_sample=False)[0, ids["input_ids"].shape[1]:]) for _ in range(2)]
    assert outs[0] == outs[1]
    assert outs[0].startswith(" Paris")
