"""Weight averaging on models: exact endpoints, LoRA scaling = full-weight merging, soups, HMA, streaming, selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from medtune import models
from medtune.errors import MedtuneError, ModelError
from medtune.merge import methods
from medtune.merge import selection
from medtune.merge.run import MergeConfig, merge
from medtune.merge.sources import LoraScaler

from conftest import make_random_adapter


def test_interpolation_endpoints_are_exact():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(methods.interpolate(a, b, 0.0), a)
    assert torch.equal(methods.interpolate(a, b, 1.0), b)
    assert torch.allclose(methods.interpolate(a, b, 0.25), 0.75 * a + 0.25 * b)
    with pytest.raises(MedtuneError, match="shape"):
        methods.interpolate(a, torch.randn(3, 5), 0.5)


def test_uniform_soup_and_greedy_soup_by_hand():
    assert torch.equal(methods.uniform_soup([torch.tensor([1.0, 3.0]), torch.tensor([3.0, 5.0])]), torch.tensor([2.0, 4.0]))
    # Scores of soups: A alone 0.6, B alone 0.5, C alone 0.55; A+C improves, A+C+B lowers -> B skipped.
    table = {("A",): 0.6, ("B",): 0.5, ("C",): 0.55, ("A", "C"): 0.62, ("A", "C", "B"): 0.61}
    soup, log = methods.greedy_soup(["A", "B", "C"], lambda ing: table[tuple(ing)])
    assert soup == ["A", "C"]
    assert [(e["model"], e["kept"]) for e in log] == [("A", True), ("C", True), ("B", False)]
    # "strictly improves": an equal score is not kept
    soup, _ = methods.greedy_soup(["A", "B"], lambda ing: 0.5)
    assert soup == ["A"]


def test_hma_ratios_blocks_and_tensor_ratios():
    assert methods.hma_ratios(0.5, 3, [0.2, 0.5, 0.8]) == [0.2, 0.5, 0.8]
    assert sum(methods.hma_ratios(0.4, 3)) / 3 == pytest.approx(0.4)
    with pytest.raises(MedtuneError, match="average"):
        methods.hma_ratios(0.5, 3, [0.2, 0.2, 0.2])
    assert [methods.block_of_layer(i, 30, 3) for i in (0, 9, 10, 19, 20, 29)] == [0, 0, 1, 1, 2, 2]
    assert [methods.block_of_layer(i, 4, 3) for i in range(4)] == [0, 0, 1, 2]
    r = [0.1, 0.5, 0.9]
    assert methods.tensor_ratio("model.layers.25.mlp.up_proj.weight", 30, r, 0.5) == 0.9
    assert methods.tensor_ratio("model.embed_tokens.weight", 30, r, 0.5) == 0.5
    assert methods.tensor_ratio("base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight", 30, r, 0.5) == 0.1


def test_pareto_and_selection_rules():
    pts = [selection.Point("a0", 0.40, 0.60), selection.Point("a5", 0.50, 0.59), selection.Point("a10", 0.55, 0.50),
           selection.Point("bad", 0.45, 0.55)]
    assert selection.pareto_front(pts) == [True, True, True, False]
    assert selection.select(pts, base_general=0.60, retain=0.98) == 1  # 0.59 >= 0.588, best medical among those
    assert selection.select(pts, base_general=0.60, rule="weighted", weight=1.0) == 2
    assert selection.select(pts, base_general=0.99) == 0  # none retains: the best general score
    # equal medical scores: the point with the better general score wins (it dominates), then the earlier one
    tie = [selection.Point("a0", 0.39, 0.48), selection.Point("a5", 0.38, 0.48), selection.Point("a10", 0.39, 0.50)]
    assert selection.select(tie, base_general=0.48) == 2
    assert selection.select(tie[:2] + [selection.Point("a10", 0.39, 0.48)], base_general=0.48) == 0


@pytest.fixture()
def tuned_adapter(tiny_llama, tmp_path):
    """A LoRA adapter on the tiny model with non-zero B (so it changes the model)."""
    return make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.05)


def merged_weights(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(models.load_model(str(base)), str(adapter)).merge_and_unload()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ratios", [None, [0.2, 0.7]])
def test_lora_scaling_equals_full_weight_interpolation(tiny_llama, tuned_adapter, tmp_path, ratios):
    alpha = 0.45
    base = load_file(str(tiny_llama / "model.safetensors"))
    tuned = merged_weights(tiny_llama, tuned_adapter)
    out = merge(MergeConfig(base=models_cfg(tiny_llama), tuned=[str(tuned_adapter)], alpha=alpha,
                            method="hma" if ratios else "linear", ratios=ratios, out=str(tmp_path / "m")))
    got = merged_weights(tiny_llama, out)
    for name, b in base.items():
        r = methods.tensor_ratio(name, 2, ratios, alpha) if ratios else alpha
        want = methods.interpolate(b, tuned[name], r)
        assert (got[name] - want).norm() <= 1e-5 * max(want.norm(), 1e-12), name
    prov = json.loads((out / "merge_provenance.json").read_text())
    assert prov["params"]["alpha"] == alpha and "weight on the tuned model" in prov["convention"]
    kit = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert kit["merge_method"] == "linear"


def models_cfg(path: Path):
    from medtune.config import ModelConfig

    return ModelConfig(spec=str(path))


def test_interpolator_changes_scaling_in_place(tiny_llama, tuned_adapter):
    from peft import PeftModel

    peft = PeftModel.from_pretrained(models.load_model(str(tiny_llama)), str(tuned_adapter))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    interp = LoraScaler(peft)
    with torch.no_grad():
        full = peft(ids).logits
        interp.set_mix_weight(0.0)
        base = peft(ids).logits
        interp.set_mix_weight(0.3)
        mid = peft(ids).logits
        interp.reset()
        again = peft(ids).logits
    ref_base = models.load_model(str(tiny_llama))(ids).logits
    assert torch.allclose(base, ref_base, atol=1e-6)
    assert torch.equal(full, again)
    assert not torch.allclose(mid, base) and not torch.allclose(mid, full)


def shard(src: Path, dst: Path, scale: float = 1.0) -> Path:
    """A copy of a model split into two safetensors shards with an index (weights optionally scaled)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    w = {k: v * scale for k, v in load_file(str(src / "model.safetensors")).items()}
    names = sorted(w)
    half = len(names) // 2
    save_file({k: w[k] for k in names[:half]}, str(dst / "model-00001-of-00002.safetensors"))
    save_file({k: w[k] for k in names[half:]}, str(dst / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors" for i, k in enumerate(names)}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_streamed_full_merge_and_soup(tiny_llama, tmp_path):
    a = shard(tiny_llama, tmp_path / "a")
    b = shard(tiny_llama, tmp_path / "b", scale=3.0)
    out = merge(MergeConfig(base=models_cfg(a), tuned=[str(b)], alpha=0.25, out=str(tmp_path / "lin")))
    merged = models.load_model(str(out)).state_dict()
    base = load_file(str(tiny_llama / "model.safetensors"))
    for k, v in base.items():
        assert torch.allclose(merged[k], v * 1.5, atol=1e-6), k  # 0.75 * v + 0.25 * 3v
    soup = merge(MergeConfig(base=models_cfg(a), tuned=[str(a), str(b)], method="soup_uniform", out=str(tmp_path / "soup")))
    merged = models.load_model(str(soup)).state_dict()
    assert torch.allclose(merged["lm_head.weight"], base["lm_head.weight"] * 2.0, atol=1e-6)


@pytest.mark.parametrize("chunk_bytes", [64, 1 << 30])
def test_streamed_merge_in_row_chunks_equals_whole_tensors(tiny_llama, tmp_path, chunk_bytes):
    """Merging in tiny row chunks (many reads per tensor) gives the whole-tensor result; the output
    is sharded like the input by default."""
    from medtune.merge.stream import merge_streaming, tensor_files

    a = shard(tiny_llama, tmp_path / "a")
    b = shard(tiny_llama, tmp_path / "b", scale=3.0)
    out = tmp_path / "out"
    merge_streaming([a, b], out, lambda name, ts: methods.interpolate(ts[0], ts[1], 0.25), chunk_bytes=chunk_bytes)
    merged = {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    for k, v in load_file(str(tiny_llama / "model.safetensors")).items():
        assert torch.equal(merged[k], torch.lerp(v, v * 3.0, 0.25)), k
    largest_in = max(p.stat().st_size for p in set(tensor_files(a).values()))
    assert max(p.stat().st_size for p in out.glob("*.safetensors")) <= largest_in + 4096  # + header


def test_mismatched_tensor_is_named(tiny_llama, tmp_path):
    a = shard(tiny_llama, tmp_path / "a")
    b = shard(tiny_llama, tmp_path / "b")
    f = b / "model-00001-of-00002.safetensors"
    w = load_file(str(f))
    name = sorted(w)[0]
    w[name] = torch.zeros(3, 3)
    save_file(w, str(f))
    with pytest.raises(ModelError, match=f"tensor '{name}'"):
        merge(MergeConfig(base=models_cfg(a), tuned=[str(b)], out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists(), "a failed merge leaves no output"


def test_non_finite_merge_is_refused(tiny_llama, tmp_path):
    a = shard(tiny_llama, tmp_path / "a")
    b = shard(tiny_llama, tmp_path / "b", scale=float("inf"))
    with pytest.raises(MedtuneError, match="non-finite"):
        merge(MergeConfig(base=models_cfg(a), tuned=[str(b)], out=str(tmp_path / "x")))


def test_config_rules():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly 1 tuned"):
        MergeConfig(tuned=["a", "b"], method="linear")
    with pytest.raises(ValidationError, match="valid: linear, hma, task_arithmetic"):
        MergeConfig(tuned=["a"], method="lerp")
    with pytest.raises(ValidationError, match="no parameter 'alpha'"):
        MergeConfig(tuned=["a"], method="ties", alpha=0.5)
    with pytest.raises(ValidationError, match="average"):
        MergeConfig(tuned=["a"], method="hma", alpha=0.5, ratios=[0.1, 0.1, 0.1])


@pytest.mark.parametrize("method,params", [("task_arithmetic", {"weight": 0.6}), ("soup_uniform", {})])
def test_lora_exact_methods_on_two_adapters_equal_merged_space(tiny_llama, tmp_path, method, params):
    """A LoRA-exact method on two adapters (one combined adapter, no full copy) equals the method
    applied to the two merged full models, tensor by tensor."""
    a1 = make_random_adapter(tiny_llama, tmp_path / "a1", seed=1, std=0.05)
    a2 = make_random_adapter(tiny_llama, tmp_path / "a2", seed=2, std=0.05)
    base = load_file(str(tiny_llama / "model.safetensors"))
    t1, t2 = merged_weights(tiny_llama, a1), merged_weights(tiny_llama, a2)
    out = merge(MergeConfig(base=models_cfg(tiny_llama), tuned=[str(a1), str(a2)], method=method, params=params,
                            out=str(tmp_path / "m")))
    assert (out / "adapter_config.json").is_file(), "exact in LoRA space: the output is an adapter"
    got = merged_weights(tiny_llama, out)
    p = methods.resolve_params(method, params)
    for name, b in base.items():
        want = methods.merge_tensor(method, p, name, 2, b, [t1[name], t2[name]])
        assert (got[name] - want).norm() <= 1e-5 * max(want.norm(), 1e-12), name


@pytest.mark.parametrize("method", ["ties", "slerp", "dare_linear"])
def test_non_exact_methods_on_lora_merge_the_merged_delta(tiny_llama, tuned_adapter, tmp_path, method):
    """TIES / SLERP / DARE on a LoRA adapter: a full model whose tensors are the method applied to
    base and base + s * B @ A."""
    base = load_file(str(tiny_llama / "model.safetensors"))
    tuned = merged_weights(tiny_llama, tuned_adapter)
    out = merge(MergeConfig(base=models_cfg(tiny_llama), tuned=[str(tuned_adapter)], method=method,
                            out=str(tmp_path / "m")))
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    got = models.load_model(str(out)).state_dict()
    p = methods.resolve_params(method)
    changed = 0
    for name, b in base.items():
        want = methods.merge_tensor(method, p, name, 2, b, [tuned[name]])
        assert torch.allclose(got[name], want, atol=1e-6), name
        changed += not torch.equal(got[name], b)
    assert changed >= 7 * 2  # every adapted projection of both layers moved
    kit = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert kit["merge_method"] == method and kit["models"][-1]["model"].endswith(f"+{tuned_adapter}")


def test_streamed_ties_reads_whole_tensors(tiny_llama, tmp_path):
    """TIES's top-k is over the whole tensor: the streamed merge of sharded checkpoints equals the
    in-memory merge even when row chunks would be tiny (it reads whole tensors for TIES)."""
    from medtune.merge.stream import merge_streaming

    a = shard(tiny_llama, tmp_path / "a")
    torch.manual_seed(3)
    w = load_file(str(tiny_llama / "model.safetensors"))
    noisy = {k: v + 0.1 * torch.randn_like(v) for k, v in w.items()}
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for f in b.glob("*.safetensors"):
        part = load_file(str(f))
        save_file({k: noisy[k] for k in part}, str(f))
    p = methods.resolve_params("ties", {"density": 0.3})
    combine = lambda name, ts: methods.merge_tensor("ties", p, name, 2, ts[0], list(ts[1:]))
    info = merge_streaming([a, b], tmp_path / "out", combine, chunk_bytes=64, whole_tensor=True)
    merged = {k: v for f in sorted((tmp_path / "out").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    for k, v in w.items():
        assert torch.equal(merged[k], methods.ties(v, [noisy[k]], density=0.3, weight=1.0)), k
    assert info["read"] == "whole tensors" and info["largest_tensor_bytes"] == max(v.numel() * 4 for v in w.values())
    chunked = merge_streaming([a, b], tmp_path / "chunked", combine, chunk_bytes=64)
    assert chunked["read"].startswith("row chunks")
    rows = {k: v for f in sorted((tmp_path / "chunked").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert any(not torch.equal(rows[k], merged[k]) for k in w), "row chunks would change TIES's result"
    out = merge(MergeConfig(base=models_cfg(a), tuned=[str(b)], method="ties", params={"density": 0.3},
                            out=str(tmp_path / "cli")))
    assert json.loads((out / "merge_provenance.json").read_text())["stream"]["read"] == "whole tensors"
