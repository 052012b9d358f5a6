"""The multi-parent search space: one weight per tuned parent of the base, task arithmetic / TIES / weighted soup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medtune.errors import ConfigError, ModelError
from medtune.merge import methods as M
from medtune.merge import search as S

FIXTURES = Path(__file__).parent / "fixtures"


# --- the space, on a synthetic objective --------------------------------------------------------------------

def test_parent_spaces_propose_one_weight_per_parent_the_same_for_the_same_seed():
    """A parents space proposes one weight per parent (a soup's normalised to shares), the same points for one seed."""
    from test_search import run

    def truth(p):
        w = p.get("weights", [0.0, 0.0, 0.0])  # the base: no parent
        return 0.4 + 0.3 * w[0] + 0.2 * w[1] - 0.1 * w[2], 1.0 - 0.05 * w[0]

    for space in ("task_arithmetic", "ties", "soup_weighted"):
        cfg = S.SearchConfig(space=space, parents=["a", "b", "c"], budget=4_000, seed=5, startup_trials=4)
        a, _ = run(cfg, truth)
        b, _ = run(cfg, truth)
        assert [p.candidate for p in a.points] == [p.candidate for p in b.points] and len(a.points) > 2
        for p in a.points:
            assert p.candidate.method == space and len(p.candidate.params["weights"]) == 3
            M.resolve_params(space, p.candidate.params, n_tuned=3)
        if space == "soup_weighted":
            assert all(abs(sum(p.candidate.params["weights"]) - 1) < 1e-3 for p in a.points)
        if space == "ties":
            assert {"density", "weight"} <= set(a.points[0].candidate.params)


def test_parents_are_refused_where_a_space_cannot_weigh_them():
    """parents need a parents space and two different models; a parents-only space needs parents."""
    with pytest.raises(ValueError, match="one tuned model"):
        S.SearchConfig(space="hma", parents=["a", "b"])
    with pytest.raises(ValueError, match="two or more"):
        S.SearchConfig(space="ties", parents=["a"])
    with pytest.raises(ValueError, match="two or more"):
        S.SearchConfig(space="ties", parents=["a", "a"])
    with pytest.raises(ValueError, match="give parents"):
        S.SearchConfig(space="soup_weighted")
    with pytest.raises(M.MedtuneError, match="one per tuned model"):
        M.resolve_params("ties", {"weights": [0.5, 1.0]}, n_tuned=3)


def test_per_parent_weights_are_the_hand_computed_merge_and_mergekit_weights():
    """Task arithmetic, TIES (mergekit's weighted form) and the weighted soup with per-parent weights equal the
    formulas by hand; equal TIES weights are peft's TIES; mergekit gets one weight per model."""
    from medtune.merge.mergekit import mergekit_doc

    torch.manual_seed(0)
    base = torch.randn(6, 5)
    tuned = [base + torch.randn(6, 5) for _ in range(3)]
    d = [t - base for t in tuned]
    w = [0.2, 0.5, 0.9]
    ta = M.merge_tensor("task_arithmetic", {"weight": 0.8, "weights": w}, "x.weight", 2, base, tuned)
    assert torch.allclose(ta, base + 0.8 * sum(wi * di for wi, di in zip(w, d)), atol=1e-6)
    soup = M.merge_tensor("soup_weighted", {"weights": w}, "x.weight", 2, base, tuned)
    assert torch.allclose(soup, sum(wi * t for wi, t in zip(w, tuned)) / sum(w), atol=1e-6)
    assert torch.allclose(ties_by_hand(base, tuned, w, 0.5, 1.3),
                          M.merge_tensor("ties", {"density": 0.5, "weight": 1.3, "weights": w}, "x.weight", 2, base, tuned),
                          atol=1e-6)
    equal = M.merge_tensor("ties", {"density": 0.5, "weight": 1.3, "weights": [1.0] * 3}, "x.weight", 2, base, tuned)
    assert torch.allclose(equal, M.merge_tensor("ties", {"density": 0.5, "weight": 1.3}, "x.weight", 2, base, tuned),
                          atol=1e-6)
    doc = mergekit_doc("ties", {"density": 0.5, "weight": 1.3, "weights": w}, "B", ["T0", "T1", "T2"], 2)
    assert [m["parameters"]["weight"] for m in doc["models"]] == w and doc["parameters"]["lambda"] == 1.3
    doc = mergekit_doc("task_arithmetic", {"weight": 0.5, "weights": w}, "B", ["T0", "T1", "T2"], 2)
    assert [m["parameters"]["weight"] for m in doc["models"]] == [0.1, 0.25, 0.45]


def ties_by_hand(base, tuned, w, density, lam):
    """mergekit's TIES: top-density magnitudes of each delta, weighted; sign of their sum; weighted mean of agreeing."""
    out = []
    deltas = [(t - base).flatten() for t in tuned]
    k = int(density * deltas[0].numel())
    kept = []
    for dlt, wi in zip(deltas, w):
        keep = torch.zeros_like(dlt)
        idx = dlt.abs().topk(k).indices
        keep[idx] = dlt[idx]
        kept.append(wi * keep)
    for j in range(deltas[0].numel()):
        s = sum(x[j] for x in kept)
        sign = 1.0 if s >= 0 else -1.0
        agree = [i for i, x in enumerate(kept) if torch.sign(x[j]) == sign]
        num = sum(kept[i][j] for i in agree) if agree else torch.tensor(0.0)
        den = sum(w[i] for i in agree) or 1.0
        out.append(num / den)
    return base + lam * torch.stack(out).reshape(base.shape)


# --- on the tiny model --------------------------------------------------------------------------------------

def full_parent(base: Path, out: Path, seed: int, recorded_base: Path | None = None) -> Path:
    """A full fine-tune made cheaply: the base's weights deterministically perturbed, with training's base record."""
    from transformers import LlamaForCausalLM

    from medtune import models
    from medtune.lora_adapter import BaseIdentity

    model = LlamaForCausalLM.from_pretrained(str(base))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(out), safe_serialization=True)
    BaseIdentity.of(models.resolve(str(recorded_base or base))).save(out)
    return out


@pytest.fixture(scope="module")
def parents(tiny_llama, tmp_path_factory):
    from conftest import make_random_adapter

    root = tmp_path_factory.mktemp("parents")
    return [str(make_random_adapter(tiny_llama, root / "lora", seed=2, std=0.5)),
            str(make_random_adapter(tiny_llama, root / "replay", seed=3, std=0.5)),
            str(full_parent(tiny_llama, root / "full", seed=4))]


def parents_sweep(tiny_llama, out: Path, parents, **search):
    from medtune.merge.sweep import SweepConfig

    return SweepConfig.model_validate({
        "base": {"spec": str(tiny_llama)}, "tuned": parents[0], "alphas": [0.0, 1.0],
        "medical_tasks": "pubmedqa", "general_tasks": "medmcqa", "data_root": str(FIXTURES), "limit": None,
        "out": str(out), "progress": False, "retain": 0.5,
        "search": {"seed": 0, "first_share": 0.5, "startup_trials": 3, "budget": 400, "parents": parents, **search}})


def by_hand(tiny_llama: Path, parents: list[str], method: str, params: dict) -> dict[str, torch.Tensor]:
    """Every base tensor merged by ``method`` from the parents read from disk (a LoRA parent: base + alpha/r B A)."""
    import json

    from safetensors.torch import load_file

    base = load_file(str(tiny_llama / "model.safetensors"))
    tuned = []
    for p in parents:
        if (Path(p) / "adapter_config.json").is_file():
            conf = json.loads((Path(p) / "adapter_config.json").read_text())
            ad = load_file(str(Path(p) / "adapter_model.safetensors"))
            state = dict(base)
            for k, a in ad.items():
                if ".lora_A." in k:
                    name = k.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
                    b = ad[k.replace(".lora_A.", ".lora_B.")]
                    state[name] = base[name] + conf["lora_alpha"] / conf["r"] * b @ a
            tuned.append(state)
        else:
            tuned.append(load_file(str(Path(p) / "model.safetensors")))
    return {n: M.merge_tensor(method, params, n, 2, t, [s[n] for s in tuned]) for n, t in base.items()}


@pytest.mark.parametrize("space", ["ties", "task_arithmetic", "soup_weighted"])
def test_a_multi_parent_search_merges_the_parents_at_each_points_weights(tiny_llama, tmp_path, parents, space):
    """A multi-parent sweep search records SweepPoints with their parents; a point's model (live and merged by
    `medtune merge` from its parents) is the method applied by hand at its weights, and scores as recorded; its
    mergekit.yaml lists every parent with its weight; a rerun proposes the same points and scores nothing."""
    from safetensors.torch import load_file

    from medtune.evaluate.run import score_model
    from medtune.merge import parents as P
    from medtune.merge import sweep as sweep_mod
    from medtune.merge.run import MergeConfig, merge

    cfg = parents_sweep(tiny_llama, tmp_path / "sweep", parents, space=space)
    res = sweep_mod.sweep(cfg)
    found = [p for p in res.points if p.search is not None]
    done = [p for p in found if p.search.complete]
    assert done and res.search.parents == parents and res.search.scored <= 400
    point = done[-1]
    assert point.method == space and point.parents == parents and len(point.params["weights"]) == 3
    assert {(p.device, p.dtype) for p in found} == {("cpu", "float32")}  # where the parents' model was placed

    want = by_hand(tiny_llama, parents, point.method, point.params)
    avg, tok = P.load(cfg.base, parents)
    avg.set(point.method, point.params)  # mixed parents: the merged weights are written into the base layers
    live = {n: t.detach() for n, t in avg.targets.items()}
    merged = tmp_path / "merged"
    merge(MergeConfig(base=cfg.base, tuned=parents, method=point.method, params=point.params, out=str(merged)))
    saved = load_file(str(merged / "model.safetensors"))
    for name, t in want.items():
        assert torch.allclose(live[name], t, atol=1e-5), name
        assert torch.allclose(saved[name], t, atol=1e-5), name

    from medtune.merge.sweep import _eval_config
    from medtune.evaluate.run import group_results
    from medtune.evaluate.scores import mean_score

    ecfg = _eval_config(cfg)
    scored, preds = score_model(avg.model, tok, ecfg)
    groups = group_results(ecfg.group_names, scored, preds)
    assert mean_score(["pubmedqa"], scored, groups) == pytest.approx(point.medical, abs=1e-9)

    kit = yaml.safe_load((tmp_path / "sweep" / point.search.mergekit).read_text())
    models_ = [m["model"] for m in kit["models"]]
    assert models_[-3:] == [f"{tiny_llama}+{parents[0]}", f"{tiny_llama}+{parents[1]}", parents[2]]
    assert [m["parameters"]["weight"] for m in kit["models"][-3:]] == pytest.approx(
        [w * point.params.get("weight", 1.0) if space == "task_arithmetic" else w for w in point.params["weights"]])

    rerun = sweep_mod.sweep(cfg)
    assert [(p.method, p.params) for p in rerun.points if p.search] == [(p.method, p.params) for p in found]


def test_the_parents_model_is_placed_as_every_stage_places_its_model(tiny_llama, tmp_path, parents):
    """The base under several parents goes where --device and model.dtype say (here bf16 on the CPU), as the
    single-parent sweep's does: a full parent's fp32 state merges into the placed weights, and `medtune merge`
    of mixed parents records the placement it merged in, not "as stored"."""
    import json

    from medtune.config import ModelConfig
    from medtune.merge import parents as P
    from medtune.merge.run import MergeConfig, merge

    base = ModelConfig(spec=str(tiny_llama), dtype="bfloat16")
    avg, _ = P.load(base, parents, "cpu")
    assert (avg.placed.device, avg.placed.dtype) == ("cpu", "bfloat16")
    assert {t.dtype for t in avg.targets.values()} == {torch.bfloat16}  # the base's weights (peft keeps LoRA's in fp32)
    params = {"weights": [0.5, 0.25, 1.0], "weight": 1.0}
    avg.set("task_arithmetic", params)
    want = by_hand(tiny_llama, parents, "task_arithmetic", params)
    for name, t in want.items():
        assert torch.allclose(avg.targets[name].float(), t, atol=2e-2, rtol=2e-2), name
    merged = tmp_path / "merged"
    merge(MergeConfig(base=base, tuned=parents, method="task_arithmetic", params=params, out=str(merged), device="cpu"))
    prov = json.loads((merged / "merge_provenance.json").read_text())
    assert (prov["device"], prov["dtype"]) == ("cpu", "bfloat16") and "model.dtype bfloat16" in prov["placement"]


def test_a_parent_tuned_from_another_base_is_refused_by_name(tiny_llama, tmp_path, parents):
    """A full parent whose recorded base has other weights, or whose tensors have other shapes, is refused, naming it."""
    from conftest import make_tiny_llama

    from medtune.config import ModelConfig
    from medtune.merge import parents as P

    other = make_tiny_llama(tmp_path / "other", seed=1)
    stranger = str(full_parent(other, tmp_path / "stranger", seed=5))
    with pytest.raises(ModelError, match=f"parent {stranger}: tuned from base"):
        P.load(ModelConfig(spec=str(tiny_llama)), [parents[0], stranger])
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(str(wide))
    with pytest.raises(ModelError, match=f"parent {wide}: tensor .* but the base"):
        P.load(ModelConfig(spec=str(tiny_llama)), [parents[0], str(wide)])


def test_a_study_searches_its_variants_as_parents_in_the_first_ones_sweep(tiny_llama, tmp_path):
    """averaging.search.parents names variants: the first one's sweep searches their model directories and waits
    for every parent's training; a point of it merges all its parents; an unknown variant is refused."""
    from test_study import tiny_study

    from medtune.merge.records import SweepPoint
    from medtune.study import steps as St
    from medtune.study.layout import StudyLayout as L

    out = tmp_path / "s"
    cfg = tiny_study(tiny_llama, out, **{
        "variants": [{"name": "lora"}, {"name": "full", "train": {"method": "full"}}],
        "averaging.search": {"space": "ties", "parents": ["lora", "full"]}})
    names = [s.name for s in St.static_plan(cfg, out)]
    assert names.index("sweep/lora") > names.index("train/full")  # the search runs after every parent's training
    sweeps = {s.name: s for s in St.static_plan(cfg, out) if s.kind == "sweep"}
    first = sweeps["sweep/lora"]
    assert first.config.search.parents == [str(L(out).model_dir("lora")), str(L(out).model_dir("full"))]
    assert set(first.deps) == {"train/lora", "train/full"} and sweeps["sweep/full"].config.search is None
    point = SweepPoint(method="ties", params={"density": 0.5, "weight": 1.0, "weights": [0.3, 0.6]}, label="p",
                       medical=0.5, general=0.5, parents=first.config.search.parents)
    from medtune.study.plan import Planned

    merge = St.build(cfg, L(out), Planned(L.merge_step("lora", "averaged"), "merge", "the averaged model of 'lora'",
                                          variant="lora", suffix="averaged", point=point))
    assert merge.config.tuned == first.config.search.parents
    with pytest.raises(ConfigError, match="unknown variant 'replay'"):
        tiny_study(tiny_llama, out, **{"averaging.search": {"space": "ties", "parents": ["lora", "replay"]}})


def test_a_part_searches_parents_trained_in_other_parts_and_waits_for_them(tiny_llama, tmp_path):
    """--only FIRST_PARENT runs the multi-parent search once the other parents' parts have trained them (their
    finished state is read from the study directory); before that, it refuses and names the part to run first.
    The other parents' parts run no search. The whole study then finds every step done."""
    from test_study import tiny_study

    from medtune.merge.records import SweepResult
    from medtune.study.layout import StudyLayout as L
    from medtune.study.run import study

    out = tmp_path / "s"
    changes = {"variants": [{"name": "lora"}, {"name": "full", "train": {"method": "full"}}],
               "averaging.alphas": [0.0, 1.0], "averaging.methods": {}, "train.max_steps": 2,
               "averaging.search": {"space": "task_arithmetic", "parents": ["full", "lora"], "budget": 40},
               "averaging.test_best_of": ["search"]}
    with pytest.raises(ConfigError, match="needs train/lora, which this part .* run the part with lora first"):
        study(tiny_study(tiny_llama, out, only=["full"], **changes))
    study(tiny_study(tiny_llama, out, only=["lora"], **changes))
    assert SweepResult.load(L(out).sweep_results("lora")).search is None
    study(tiny_study(tiny_llama, out, only=["full"], **changes))
    searched = SweepResult.load(L(out).sweep_results("full"))
    assert searched.search is not None and any(p.parents for p in searched.points)
    import json

    states = {p.parent.name: json.loads(p.read_text())["state"] for p in (out / "train").glob("*/.medtune-step.json")}
    assert states == {"lora": "done", "full": "done"}
    from medtune.study.run import Prints, _plan
    from medtune.study import steps as St

    whole = tiny_study(tiny_llama, out, **changes)
    prints = Prints(L(out))
    pending = []
    for step in _plan(whole, out):
        if isinstance(step, St.Step) and step.kind != "report":
            prints.of(step)
            if prints.status(step) != "done":
                pending.append(step.name)
    assert pending == []
