"""The averaging table: every method on tiny tensors with numbers checkable by hand, the table's
invariants, and LoRA space == merged space for the methods that claim it."""

from __future__ import annotations

import math

import pytest
import torch

from medtune.errors import MedtuneError
from medtune.merge import methods as M
from medtune.merge.mergekit import mergekit_doc

T = torch.tensor


def test_task_arithmetic_adds_weighted_deltas():
    base = T([1.0, 2.0])
    # deltas [1, 0] and [0, 2]; sum [1, 2]; times 0.5
    got = M.task_arithmetic(base, [T([2.0, 2.0]), T([1.0, 4.0])], weight=0.5)
    assert torch.equal(got, T([1.5, 3.0]))


def test_ties_trims_elects_sign_and_takes_the_disjoint_mean():
    base = torch.zeros(5)
    d1 = T([3.0, -1.0, 0.5, 2.0, 1.2])   # top 3 by magnitude: 3, 2, 1.2
    d2 = T([1.5, -4.0, 0.2, 0.1, -3.0])  # top 3: -4, -3, 1.5
    # kept sums [4.5, -4, 0, 2, -1.8] -> signs + - + + -; entry 0: both agree -> (3 + 1.5) / 2;
    # entry 4: d1's 1.2 disagrees with the elected minus -> only d2's -3 counts.
    got = M.ties(base, [d1, d2], density=0.6, weight=1.0)
    assert torch.allclose(got, T([2.25, -4.0, 0.0, 2.0, -3.0]))
    assert torch.allclose(M.ties(base + 1, [d1 + 1, d2 + 1], density=0.6, weight=0.5),
                          1 + 0.5 * T([2.25, -4.0, 0.0, 2.0, -3.0]))


def test_dare_drops_and_rescales_by_one_over_density_seeded():
    base, tuned = torch.zeros(10_000), torch.ones(10_000)  # delta 1 everywhere
    before = torch.random.get_rng_state()
    got = M.dare_linear(base, [tuned], density=0.25, weight=1.0, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before), "the caller's RNG is left as it was"
    kept = got != 0
    assert torch.equal(got[kept], torch.full((int(kept.sum()),), 4.0))  # 1 / 0.25
    assert abs(kept.float().mean().item() - 0.25) < 0.02 and abs(got.mean().item() - 1.0) < 0.08
    assert torch.equal(got, M.dare_linear(base, [tuned], density=0.25, weight=1.0, seed=7))
    assert not torch.equal(got, M.dare_linear(base, [tuned], density=0.25, weight=1.0, seed=8))
    # one model: TIES's sign election keeps every surviving entry, so dare_ties == dare_linear
    assert torch.equal(M.dare_ties(base, [tuned], density=0.25, weight=1.0, seed=7), got)
    # the per-tensor seed differs between tensors and is the same however the merge is ordered
    p = M.resolve_params("dare_linear", {"density": 0.25, "seed": 7})
    a = M.merge_tensor("dare_linear", p, "model.layers.0.mlp.up_proj.weight", 2, base, [tuned])
    b = M.merge_tensor("dare_linear", p, "model.layers.1.mlp.up_proj.weight", 2, base, [tuned])
    assert not torch.equal(a, b)
    assert torch.equal(a, M.merge_tensor("dare_linear", p, "model.layers.0.mlp.up_proj.weight", 2, base, [tuned]))


def test_slerp_follows_the_angle_and_falls_back_to_lerp_for_parallel_tensors():
    e1, e2 = T([1.0, 0.0]), T([0.0, 1.0])  # 90 degrees apart
    assert torch.allclose(M.slerp(e1, [e2], alpha=0.5), T([math.cos(math.pi / 4), math.sin(math.pi / 4)]))
    assert torch.allclose(M.slerp(e1, [e2], alpha=1 / 3), T([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)
    # the norm is carried along: two vectors of norm 2 stay on the circle of radius 2
    assert torch.allclose(M.slerp(2 * e1, [2 * e2], alpha=0.5), T([math.sqrt(2), math.sqrt(2)]))
    # parallel and antiparallel: linear interpolation
    assert torch.allclose(M.slerp(T([1.0, 2.0]), [T([2.0, 4.0])], alpha=0.25), T([1.25, 2.5]))
    assert torch.allclose(M.slerp(e1, [-e1], alpha=0.5), T([0.0, 0.0]))
    assert torch.equal(M.slerp(e1, [e2], alpha=0.0), e1)
    # a 2-d tensor is one vector (whole-tensor angle), not one angle per row
    a, b = T([[1.0, 0.0], [0.0, 0.0]]), T([[0.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(M.slerp(a, [b], alpha=0.5), T([[0.7071068, 0.0], [0.0, 0.7071068]]))


def test_linear_hma_and_soups_by_hand():
    assert torch.equal(M.linear(T([0.0, 4.0]), [T([2.0, 0.0])], alpha=0.25), T([0.5, 3.0]))
    assert torch.equal(M.soup(T([9.0]), [T([1.0]), T([3.0])]), T([2.0]))  # the base is no ingredient
    p = M.resolve_params("hma", {"alpha": 0.5, "ratios": [0.2, 0.8]})
    base, tuned = torch.zeros(1), [torch.ones(1)]
    assert M.merge_tensor("hma", p, "model.layers.0.mlp.up_proj.weight", 2, base, tuned).item() == pytest.approx(0.2)
    assert M.merge_tensor("hma", p, "model.layers.1.mlp.up_proj.weight", 2, base, tuned).item() == pytest.approx(0.8)
    assert M.merge_tensor("hma", p, "lm_head.weight", 2, base, tuned).item() == pytest.approx(0.5)


def _defaults(name: str) -> M.Params:
    return M.resolve_params(name, {"ratios": [0.25, 0.75]} if name == "hma" else {})


@pytest.mark.parametrize("name", list(M.MERGE_METHODS))
def test_every_method_returns_the_base_when_the_tuned_models_are_the_base(name):
    base = torch.randn(6, 4)
    k = M.MERGE_METHODS[name].n_tuned or 2
    got = M.merge_tensor(name, _defaults(name), "model.layers.0.mlp.up_proj.weight", 2, base, [base.clone()] * k)
    assert torch.allclose(got, base, atol=1e-6) and got.dtype == base.dtype


@pytest.mark.parametrize("name", [n for n, m in M.MERGE_METHODS.items() if m.lora is not None])
def test_lora_exact_methods_are_a_weighted_sum_of_deltas(name):
    """What ``lora`` claims: the result is base + sum_i c_i delta_i, so scaling each adapter's B by c_i
    gives the same model as merging the merged weights."""
    torch.manual_seed(0)
    base = torch.randn(8, 5)
    k = M.MERGE_METHODS[name].n_tuned or 3
    deltas = [torch.randn(8, 5) for _ in range(k)]
    params = {**_defaults(name), **({"weight": 0.7} if "weight" in M.MERGE_METHODS[name].params else {})}
    tname = "model.layers.1.self_attn.q_proj.weight"
    got = M.merge_tensor(name, params, tname, 2, base, [base + d for d in deltas])
    coeffs = M.MERGE_METHODS[name].lora(M.tensor_params(name, params, tname, 2), k)
    assert torch.allclose(got, base + sum(c * d for c, d in zip(coeffs, deltas)), atol=1e-5)


@pytest.mark.parametrize("name", [n for n, m in M.MERGE_METHODS.items() if m.lora is None])
def test_methods_not_claiming_lora_exactness_are_no_scaling_of_the_delta(name):
    """Scaling an adapter's B by a number can only give ``c * delta``; these methods give something else."""
    torch.manual_seed(0)
    base, d = torch.randn(8, 5), torch.randn(8, 5)
    r = M.merge_tensor(name, _defaults(name), "x.weight", 2, base, [base + d]) - base
    c = (r * d).sum() / (d * d).sum()  # the best scalar fit
    assert (r - c * d).norm() > 1e-2 * r.norm()


def test_params_are_checked_against_the_table():
    with pytest.raises(MedtuneError, match="valid: density, weight"):
        M.resolve_params("ties", {"alpha": 0.5})
    with pytest.raises(MedtuneError, match="valid: linear, hma"):
        M.method("lerp")
    with pytest.raises(MedtuneError, match="outside"):
        M.resolve_params("ties", {"density": 1.5})
    with pytest.raises(MedtuneError, match="required"):
        M.resolve_params("hma", {"alpha": 0.5})
    with pytest.raises(MedtuneError, match="exactly 1"):
        M.resolve_params("slerp", {}, n_tuned=2)
    assert M.resolve_params("dare_ties") == {"density": 0.5, "weight": 1.0, "seed": 0}


def test_labels_and_mergekit_export_come_from_the_table():
    assert M.label("linear", {"alpha": 0.5}) == "α=0.5"
    assert M.label("ties", {"density": 0.3, "weight": 1.0}) == "ties density=0.3 weight=1"
    doc = mergekit_doc("ties", {"density": 0.3, "weight": 0.5}, "B", ["T1", "T2"], 2)
    assert doc["merge_method"] == "ties" and doc["base_model"] == "B"
    assert doc["models"] == [{"model": "T1", "parameters": {"weight": 1.0, "density": 0.3}},
                             {"model": "T2", "parameters": {"weight": 1.0, "density": 0.3}}]
    assert doc["parameters"] == {"normalize": True, "lambda": 0.5}
    slerp = mergekit_doc("slerp", {"alpha": 0.3}, "B", ["T"], 2)
    assert [m["model"] for m in slerp["models"]] == ["B", "T"] and slerp["parameters"] == {"t": 0.3}
    lin = mergekit_doc("linear", {"alpha": 0.3}, "B", ["T"], 2)
    assert "base_model" not in lin and [m["parameters"]["weight"] for m in lin["models"]] == [0.7, 0.3]
    hma = mergekit_doc("hma", {"alpha": 0.5, "ratios": [0.2, 0.5, 0.8]}, "B", ["T"], 6)
    tuned_w, base_w = hma["models"][1]["parameters"]["weight"], hma["models"][0]["parameters"]["weight"]
    assert tuned_w[0] == {"filter": "model.layers.0.", "value": 0.2}
    assert tuned_w[5] == {"filter": "model.layers.5.", "value": 0.8}
    assert tuned_w[-1] == {"value": 0.5} and base_w[0]["value"] == 0.8
    for name in M.MERGE_METHODS:  # every entry exports
        assert mergekit_doc(name, _defaults(name), "B", ["T"], 2)["merge_method"] == M.MERGE_METHODS[name].mergekit
