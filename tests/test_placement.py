"""One placement rule for every stage that loads a model: where (device) and how (dtype), said and recorded.

No GPU here: CUDA is faked by monkeypatching torch.cuda, and each stage is shown to ask the one rule and
load the model as it says (a CPU placement in bfloat16, which no stage picks by itself on a CPU)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medtune import placement
from medtune.config import ModelConfig, validate
from medtune.errors import ConfigError
from medtune.placement import Placement

from conftest import make_random_adapter, make_tiny_llama

FIXTURES = Path(__file__).parent / "fixtures"


def fake_cuda(monkeypatch, capability: tuple[int, int] = (9, 0), count: int = 2) -> None:
    """torch.cuda as on a machine with ``count`` GPUs of compute capability ``capability``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_auto_is_the_gpu_in_bf16_where_cuda_has_native_bf16(monkeypatch):
    """auto on an Ampere-or-newer GPU: cuda:0 in bfloat16, and the line says why."""
    fake_cuda(monkeypatch, (8, 0))
    got = placement.resolve("auto", "auto")
    assert (got.device, got.dtype) == ("cuda:0", "bfloat16")
    assert got.line().startswith("model on cuda:0 in bfloat16 (auto: CUDA available")


def test_auto_is_fp16_on_a_gpu_without_native_bf16(monkeypatch):
    """Pre-Ampere (V100: 7.0) gets fp16, by the training engine's rule (models.native_bf16)."""
    fake_cuda(monkeypatch, (7, 0))
    got = placement.resolve("auto", "auto")
    assert (got.device, got.dtype) == ("cuda:0", "float16") and "7.0" in got.reason


def test_an_explicit_dtype_is_honoured_on_a_gpu(monkeypatch):
    """--dtype float32 on a GPU stays float32 (lm-eval's fp32 numbers); cuda:N picks that GPU."""
    fake_cuda(monkeypatch)
    got = placement.resolve("cuda:1", "float32")
    assert (got.device, got.dtype) == ("cuda:1", "float32")


def test_auto_without_cuda_is_the_cpu_in_fp32(monkeypatch):
    """No CUDA: the CPU in float32; --device cpu does the same on a GPU machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (placement.resolve().device, placement.resolve().dtype) == ("cpu", "float32")
    fake_cuda(monkeypatch)
    assert (placement.resolve("cpu").device, placement.resolve("cpu").dtype) == ("cpu", "float32")


def test_under_a_launcher_cuda_is_the_process_gpu(monkeypatch):
    """accelerate/torchrun's LOCAL_RANK picks the process's GPU, as accelerate does."""
    fake_cuda(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert placement.resolve("auto").device == "cuda:1"


def test_a_gpu_asked_for_where_there_is_none_or_out_of_range_is_a_config_error(monkeypatch):
    """cuda without CUDA, and cuda:N beyond the machine's GPUs, are one-line ConfigErrors; a bad name is refused at the edge."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        placement.resolve("cuda", "auto")
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\)"):
        placement.resolve("cuda:2", "auto")
    from medtune.evaluate.run import EvalConfig

    with pytest.raises(ConfigError, match="device: invalid value 'gpu'"):
        validate(EvalConfig, {"device": "gpu"}, "eval.yaml")


def test_every_stage_config_shares_one_device_field():
    """eval, sweep, merge, chat, model info and the study take `device` from one definition, default auto."""
    from medtune.chat import ChatConfig
    from medtune.evaluate.run import EvalConfig
    from medtune.merge.run import MergeConfig
    from medtune.merge.sweep import SweepConfig
    from medtune.model_info import ModelInfoConfig
    from medtune.study.config import StudyConfig

    for model in (EvalConfig, SweepConfig, MergeConfig, ChatConfig, StudyConfig, ModelInfoConfig):
        assert issubclass(model, placement.Placed) and model.model_fields["device"].default == "auto"


@pytest.fixture()
def asked(monkeypatch) -> list[tuple[str, str]]:
    """Every (device, dtype) a stage asks the rule for; the rule answers the CPU in bfloat16."""
    calls: list[tuple[str, str]] = []

    def rule(device: str = "auto", dtype: str = "auto") -> Placement:
        calls.append((device, dtype))
        return Placement("cpu", "bfloat16", "test rule")

    monkeypatch.setattr(placement, "resolve", rule)
    return calls


@pytest.fixture()
def scored(monkeypatch) -> list[torch.dtype]:
    """The parameter dtype of every model the evaluation scores (sweep points, soup ingredients)."""
    from medtune.evaluate import run as eval_run

    seen: list[torch.dtype] = []
    real = eval_run.score_model
    monkeypatch.setattr(eval_run, "score_model",
                        lambda model, *a, **k: seen.append(next(model.parameters()).dtype) or real(model, *a, **k))
    return seen


def test_eval_places_the_model_by_the_rule_and_records_it(tiny_llama, tmp_path, asked, capsys):
    """medtune eval asks the rule with its device and model.dtype, scores there, prints and records device and dtype."""
    from medtune.evaluate.run import EvalConfig, evaluate

    cfg = EvalConfig.model_validate({"model": {"spec": str(tiny_llama), "dtype": "bfloat16"}, "device": "cpu",
                                     "tasks": "pubmedqa", "data_root": str(FIXTURES), "limit": 3,
                                     "out": str(tmp_path / "ev"), "progress": False})
    evaluate(cfg)
    assert asked == [("cpu", "bfloat16")]
    got = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert (got["device"], got["dtype"], got["placement"]) == ("cpu", "bfloat16", "test rule")
    assert "model on cpu in bfloat16 (test rule)" in capsys.readouterr().err


def test_sweep_scores_every_point_where_the_rule_puts_the_model(tiny_llama, tmp_path, asked, scored):
    """medtune sweep loads the base by the rule (it ignored device and dtype before) and records them per point (the
    rule is asked twice with the same settings: the dtype keys the sweep's reused scores, then the model loads)."""
    from medtune.merge.sweep import SweepConfig, sweep

    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=2, std=0.5)
    cfg = SweepConfig.model_validate({"base": {"spec": str(tiny_llama), "dtype": "bfloat16"}, "tuned": str(adapter),
                                      "alphas": [0.0, 1.0], "medical_tasks": "pubmedqa", "general_tasks": "medmcqa",
                                      "data_root": str(FIXTURES), "limit": 2, "out": str(tmp_path / "sw"),
                                      "progress": False, "device": "cpu"})
    result = sweep(cfg)
    assert set(asked) == {("cpu", "bfloat16")} and scored and set(scored) == {torch.bfloat16}
    assert {(p.device, p.dtype) for p in result.points} == {("cpu", "bfloat16")}


def test_a_full_checkpoint_sweep_averages_on_the_models_device(tiny_llama, tmp_path, asked, scored):
    """Full weights: the tuned state dict stays on the CPU and meets the placed model tensor by tensor."""
    from medtune.merge.sweep import SweepConfig, sweep

    tuned = make_tiny_llama(tmp_path / "tuned", seed=1)
    cfg = SweepConfig.model_validate({"base": {"spec": str(tiny_llama)}, "tuned": str(tuned), "alphas": [0.5],
                                      "medical_tasks": "pubmedqa", "general_tasks": "medmcqa", "data_root": str(FIXTURES),
                                      "limit": 2, "out": str(tmp_path / "sw"), "progress": False})
    result = sweep(cfg)
    assert set(asked) == {("auto", "auto")} and set(scored) == {torch.bfloat16}
    assert [p.dtype for p in result.points] == ["bfloat16", "bfloat16"]


def test_greedy_soup_scores_its_ingredients_where_the_rule_puts_the_model(tiny_llama, tmp_path, asked, scored):
    """The greedy soup (merge method soup_greedy) asks the rule and records the placement in the provenance."""
    from medtune.merge.run import MergeConfig, merge

    adapters = [str(make_random_adapter(tiny_llama, tmp_path / f"a{i}", seed=i, std=0.3)) for i in range(2)]
    cfg = MergeConfig.model_validate({"base": {"spec": str(tiny_llama), "dtype": "bfloat16"}, "tuned": adapters,
                                      "method": "soup_greedy", "heldout_tasks": "pubmedqa", "heldout_limit": 2,
                                      "data_root": str(FIXTURES), "out": str(tmp_path / "soup"), "device": "cpu"})
    merge(cfg)
    assert asked and set(asked) == {("cpu", "bfloat16")} and set(scored) == {torch.bfloat16}
    prov = json.loads((tmp_path / "soup" / "merge_provenance.json").read_text())
    assert prov["soup"]["dtype"] == "bfloat16" and prov["device"] == "cpu"


def test_merge_averages_on_the_placed_model_and_says_where_a_streamed_merge_ran(tiny_llama, tmp_path, asked, capsys):
    """TIES on LoRA inputs merges in the placed model (saved in its dtype); a streamed merge says it ran on the CPU."""
    from medtune.merge.run import MergeConfig, merge

    adapter = str(make_random_adapter(tiny_llama, tmp_path / "a", seed=1, std=0.3))
    merge(MergeConfig.model_validate({"base": {"spec": str(tiny_llama), "dtype": "bfloat16"}, "tuned": [adapter],
                                      "method": "ties", "out": str(tmp_path / "ties"), "device": "cpu"}))
    assert asked == [("cpu", "bfloat16")]
    prov = json.loads((tmp_path / "ties" / "merge_provenance.json").read_text())
    assert (prov["device"], prov["dtype"]) == ("cpu", "bfloat16")
    assert {t.dtype for t in load_file(str(tmp_path / "ties" / "model.safetensors")).values()} == {torch.bfloat16}
    tuned = str(make_tiny_llama(tmp_path / "tuned", seed=1))
    merge(MergeConfig.model_validate({"base": {"spec": str(tiny_llama)}, "tuned": [tuned], "alpha": 0.5,
                                      "out": str(tmp_path / "streamed")}))
    assert len(asked) == 1  # no model is loaded for a streamed merge
    prov = json.loads((tmp_path / "streamed" / "merge_provenance.json").read_text())
    assert prov["device"] == "cpu" and "streamed" in prov["placement"]
    assert "merge on cpu (no model loaded" in capsys.readouterr().err


def test_chat_talks_to_the_model_where_the_rule_puts_it(tiny_llama, asked):
    """medtune chat loads the model by the rule (it ignored device and dtype before) and generates with it there."""
    from medtune.chat import ChatConfig, answer, load

    cfg = ChatConfig.model_validate({"model": {"spec": str(tiny_llama), "dtype": "bfloat16"}, "device": "cpu",
                                     "max_new_tokens": 4})
    model, tok = load(cfg)
    assert asked == [("cpu", "bfloat16")] and next(model.parameters()).dtype == torch.bfloat16
    assert isinstance(answer(model, tok, cfg, [{"role": "user", "content": "The heart"}], stream=False), str)


def test_model_info_shows_the_model_where_the_rule_puts_it_with_its_attention(tiny_llama, asked):
    """medtune model info loads by the rule (it ignored device and dtype, and loaded a GPU's 16-bit dtype on the
    CPU), generates there, and says device, dtype and attention; model.attn_implementation reaches every placed
    model (it reached training only)."""
    from medtune.model_info import ModelInfoConfig, model_info

    cfg = ModelInfoConfig.model_validate({"model": {"spec": str(tiny_llama), "dtype": "bfloat16",
                                                    "attn_implementation": "eager"}, "device": "cpu",
                                          "prompt": "The heart", "max_new_tokens": 2})
    info = model_info(cfg)
    assert asked == [("cpu", "bfloat16")]
    assert (info["device"], info["dtype"], info["attention"]) == ("cpu", "bfloat16", "eager")
    assert isinstance(info["completion"], str)


def study_cfg(tiny_llama: Path, out: Path, **changes):
    from medtune.config import load_config
    from medtune.demo import demo_data_dir
    from medtune.study.run import StudyRunConfig

    from conftest import FEATURE_STUDY

    cfg = load_config(StudyRunConfig, FEATURE_STUDY, {"model.spec": str(tiny_llama), "out": str(out), "progress": False,
                                                      "train.max_steps": 2, **changes})
    cfg.base_dir = str(demo_data_dir())
    return cfg


def test_the_study_passes_its_device_to_every_eval_sweep_and_merge_step(tiny_llama, tmp_path):
    """study `device` reaches the eval, sweep and merge steps; it is where they run, so no fingerprint changes."""
    from medtune.study import steps as S

    out = tmp_path / "s"
    cfg = study_cfg(tiny_llama, out, device="cpu")
    from medtune.study.layout import StudyLayout
    from medtune.study.plan import StandIn

    static = S.static_plan(cfg, out)
    plan = static + [s for s in S.built_plan(cfg, StudyLayout(out), StandIn(tuple(cfg.swept)))
                     if isinstance(s, S.Step) and s.kind in ("merge", "eval") and s.name not in {t.name for t in static}]
    kinds = {s.kind for s in plan if s.kind != "train"}
    assert kinds == {"eval", "sweep", "merge"}
    assert {s.config.device for s in plan if s.kind != "train"} == {"cpu"}
    auto = S.static_plan(study_cfg(tiny_llama, out), out)
    assert [s.basis({d: "x" for d in s.deps}, out) for s in auto] == \
           [s.basis({d: "x" for d in s.deps}, out) for s in plan[:len(auto)]]


def test_study_eval_steps_run_under_the_eval_launcher(tiny_llama, tmp_path, monkeypatch):
    """eval_launcher runs each eval step as LAUNCHER -m medtune eval STEP/eval.yaml (accelerate: one process per GPU)."""
    from medtune.config import load_config
    from medtune.evaluate.run import EvalConfig, evaluate
    from medtune.study import run as study_run
    from medtune.study import steps as S

    out = tmp_path / "s"
    cfg = study_cfg(tiny_llama, out, eval_launcher=["accelerate", "launch", "--num_processes", "2"],
                    **{"evaluation.limit": 2})
    step = S.static_plan(cfg, out)[0]
    ran: list[list[str]] = []

    def launched(cmd, *a, **k):  # stands in for the launcher: runs the command's config in this process
        ran.append(cmd)
        evaluate(load_config(EvalConfig, cmd[-1]))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", launched)
    from medtune.study.fingerprint import digest

    basis = step.basis({}, out)
    study_run._execute(step, out, cfg, basis, "run", digest(basis))
    assert ran == [["accelerate", "launch", "--num_processes", "2", "-m", "medtune", "eval",
                    str(out / step.name / "eval.yaml")]]
    assert json.loads((out / step.name / "results.json").read_text())["tasks"]
    assert json.loads((out / step.name / ".medtune-step.json").read_text())["state"] == "done"
