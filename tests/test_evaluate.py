"""Evaluation: the shared-prefix scorer equals plain lm-eval scoring; metrics; the eval stage's artifacts."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from medtune import models
from medtune.errors import ConfigError, ModelError
from medtune.evaluate import metrics
from medtune.evaluate.perplexity import sliding_window_nll
from medtune.evaluate.requests import McRequest, encode_pair
from medtune.evaluate.scorer import Scorer, reference_loglikelihoods, shared_prefix_length

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_model(tiny_llama):
    return models.load_model(str(tiny_llama))


def random_requests(n: int, prefix_len: int, seed: int = 0) -> list[McRequest]:
    rng = random.Random(seed)
    prefix = tuple(rng.randrange(3, 300) for _ in range(prefix_len))
    reqs = []
    for i in range(n):
        ctx = prefix + tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 40)))
        choices = tuple(tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 5))) for _ in range(4))
        reqs.append(McRequest(str(i), ctx, choices, 0, (1, 1, 1, 1)))
    return reqs


@pytest.mark.parametrize("prefix_len,budget,max_length", [(0, 64, None), (20, 512, None), (20, 100_000, None), (0, 256, 30)])
def test_scorer_equals_one_sequence_at_a_time(tiny_model, prefix_len, budget, max_length):
    reqs = random_requests(25, prefix_len)
    ref = reference_loglikelihoods(tiny_model, reqs, max_length=max_length)
    got = Scorer(tiny_model, token_budget=budget, max_length=max_length).loglikelihoods(reqs, progress=False)
    assert max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r, g)) < 1e-4


def test_single_token_choices_need_one_forward_per_batch(tiny_model, monkeypatch):
    reqs = [McRequest(str(i), tuple(range(5, 25 + i)), ((7,), (8,), (9,)), 0, (1, 1, 1)) for i in range(6)]
    calls = []
    scorer = Scorer(tiny_model, token_budget=100_000)
    real = scorer.decoder.forward
    monkeypatch.setattr(scorer.decoder, "forward", lambda *a, **k: calls.append(k["input_ids"].shape) or real(*a, **k))
    got = scorer.loglikelihoods(reqs, progress=False)
    # The 19-token prefix shared by every context runs once; then one batched pass over the six
    # context remainders scores all three single-token choices of every item: no per-choice passes.
    assert [tuple(c) for c in calls] == [(1, 19), (6, 6)]
    ref = reference_loglikelihoods(tiny_model, reqs)
    assert max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r, g)) < 1e-4


def test_shared_prefix_length():
    assert shared_prefix_length([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3)]) == 2
    assert shared_prefix_length([(1, 2, 3), (1, 2, 3)]) == 2  # at least one token left to run
    assert shared_prefix_length([(1,)]) == 0


def test_encode_pair_moves_trailing_space_like_lm_eval(tiny_llama):
    tok = models.load_tokenizer(str(tiny_llama))
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"


def test_metrics_by_hand():
    assert metrics.predict([-1.0, -0.5, -0.5]) == 1  # tie -> lowest index
    assert metrics.predict_norm([-4.0, -6.0], [2, 6]) == 1  # -2/char vs -1/char
    assert metrics.stderr([1, 0, 1, 0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    s = metrics.summarize([1.0] * 30 + [0.0] * 70)
    assert s["value"] == 0.3 and s["n"] == 100 and s["ci95"][0] < 0.3 < s["ci95"][1]
    assert 0.2 < s["ci95"][0] and s["ci95"][1] < 0.4
    assert metrics.by_group([1, 0, 1], ["b", "a", "b"])["b"]["value"] == 1.0
    assert metrics.perplexity(2 * math.log(3), 2) == pytest.approx(3.0)


def test_sliding_window_perplexity_scores_each_token_once(tiny_model):
    ids = list(range(3, 103))
    full = sliding_window_nll(tiny_model, ids, window=200, stride=200, progress=False)
    with torch.inference_mode():
        logits = tiny_model(torch.tensor([ids])).logits[0, :-1].float()
    ref = -torch.log_softmax(logits, -1)[torch.arange(99), torch.tensor(ids[1:])].sum()
    assert full.tokens == 99 and full.nll_sum == pytest.approx(float(ref), rel=1e-5)
    strided = sliding_window_nll(tiny_model, ids, window=32, stride=16, progress=False)
    assert strided.tokens == 99  # every token after the first, exactly once


def test_the_perplexity_progress_bar_ends_at_its_total(tiny_model, monkeypatch):
    """The bar's total is the windows run: it ends at 6/6, not at 6 of a larger total."""
    import tqdm.auto

    seen = []

    class Bar(list):
        def __init__(self, it, **kw):
            super().__init__(it)
            seen.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    ids = list(range(3, 103))
    sliding_window_nll(tiny_model, ids, window=32, stride=16)
    assert list(seen[0]) == [0, 16, 32, 48, 64, 80]  # 80 + 32 >= 100 tokens: the last window
    sliding_window_nll(tiny_model, ids, window=200, stride=200)
    assert list(seen[1]) == [0]


def test_eval_stage_on_fixtures(tiny_llama, tmp_path):
    from medtune.evaluate.run import EvalConfig, evaluate

    cfg = EvalConfig.model_validate({
        "model": {"spec": str(tiny_llama)}, "tasks": "pubmedqa,medmcqa,medqa4,arc_challenge,ppl_general",
        "data_root": str(FIXTURES), "out": str(tmp_path / "ev"), "progress": False, "ppl_window": 32, "ppl_stride": 16,
        "task_sources": {
            "medqa4": {"adapter": "medqa", "path": "medqa/4_options/phrases_no_exclude_test.jsonl"},
            "arc_challenge": {"adapter": "arc", "path": "arc/ARC-Challenge-Test.jsonl"},
            "ppl_general": {"adapter": "text", "path": "text/replay.txt"},
        },
    })
    report = evaluate(cfg)
    on_disk = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert on_disk["tasks"].keys() == {"pubmedqa", "medmcqa", "medqa4", "arc_challenge", "ppl_general"}
    med = on_disk["tasks"]["medmcqa"]
    assert med["n"] == 4 and 0 <= med["acc"]["value"] <= 1 and "acc_by_subject" in med
    preds = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert sum("gold" in p for p in preds) == 3 + 4 + 4 + 4
    docs = [p for p in preds if p["task"] == "ppl_general"]  # per-document sums, for paired comparisons
    assert sum(d["tokens"] for d in docs) == on_disk["tasks"]["ppl_general"]["tokens"]
    preds = [p for p in preds if "gold" in p]
    # acc equals the mean of the per-item predictions written next to it
    pub = [p for p in preds if p["task"] == "pubmedqa"]
    assert report["tasks"]["pubmedqa"]["acc"]["value"] == pytest.approx(sum(p["pred"] == p["gold"] for p in pub) / len(pub))
    assert all(len(p["loglikelihoods"]) == (3 if p["task"] == "pubmedqa" else len(p["loglikelihoods"])) for p in preds)
    assert on_disk["tasks"]["ppl_general"]["perplexity"]["value"] > 1


def test_unknown_task_lists_valid_names():
    from medtune.config import validate
    from medtune.evaluate.run import EvalConfig

    with pytest.raises(ConfigError, match="unknown task 'pubmed'.*pubmedqa"):
        validate(EvalConfig, {"tasks": "pubmed"}, "cli")


def test_adapter_for_another_architecture_is_refused(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(tmp_path / "adapter"))
    model = models.load_model(str(tiny_llama))
    with pytest.raises(ModelError, match=r"lora_A.*has shape \(4, 48\).*another model size"):
        models.load_with_adapter(model, tmp_path / "adapter")
    own = LlamaForCausalLM.from_pretrained(str(tiny_llama))
    get_peft_model(own, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(tmp_path / "ok"))
    wrapped = models.load_with_adapter(models.load_model(str(tiny_llama)), tmp_path / "ok")
    from peft import PeftModel

    assert isinstance(wrapped, PeftModel)


@pytest.mark.parametrize("output,letters,want", [
    ("B", True, 1), ("(C) text", True, 2), ("Answer: D", True, 3), ("D. Cross-linking\n\nThe correct answer is: D", True, 3),
    ("The correct answer is: B", True, 1), ("The answer is (A).", True, 0), ("", True, None), ("I am not sure", True, None),
    ("The answer is E", True, None),  # a letter that is not an option
    ("Yes.\nThe study", False, 0), ("The answer to the question is yes. A", False, 0), ("no, it is not", False, 1), ("The answer is no.\nThe answer is no.", False, 1),
    ("Maybe", False, 2), ("The results are unclear", False, None),
])
def test_generated_answers_are_extracted(output, letters, want):
    from medtune.data.records import QARecord
    from medtune.evaluate.generate import extract_answer

    options = ("A text", "B text", "C text", "D text") if letters else ("yes", "no", "maybe")
    rec = QARecord(id="x", dataset="t", question="q?", context=None, options=options, answer=0)
    assert extract_answer(output, rec, letters) == want


def test_an_adapter_is_scored_merged_with_the_same_log_likelihoods(tiny_llama, tmp_path, monkeypatch):
    """`medtune eval --adapter` merges the LoRA weights before scoring: same scores as the unmerged model."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraModel
    from transformers import LlamaForCausalLM

    from medtune.evaluate.run import EvalConfig, evaluate, score_model

    torch.manual_seed(0)
    lora = get_peft_model(LlamaForCausalLM.from_pretrained(str(tiny_llama)),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "adapter"))
    cfg = EvalConfig.model_validate({"model": {"spec": str(tiny_llama)}, "adapter": str(tmp_path / "adapter"),
                                     "tasks": "pubmedqa,medmcqa", "data_root": str(FIXTURES),
                                     "out": str(tmp_path / "ev"), "progress": False})
    merges: list[int] = []
    real_merge = LoraModel.merge_and_unload
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: merges.append(1) or real_merge(self, *a, **k))
    evaluate(cfg)
    assert merges == [1]
    merged = [json.loads(l) for l in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    unmerged_model = models.load_with_adapter(models.load_model(str(tiny_llama)), tmp_path / "adapter")
    base_preds = score_model(models.load_model(str(tiny_llama)), models.load_tokenizer(str(tiny_llama)), cfg)[1]
    _, unmerged = score_model(unmerged_model, models.load_tokenizer(str(tiny_llama)), cfg)
    assert [p["pred"] for p in merged] == [p["pred"] for p in unmerged]
    for m, u, b in zip(merged, unmerged, base_preds):
        assert m["loglikelihoods"] == pytest.approx(u["loglikelihoods"], abs=1e-4)
    assert any(u["loglikelihoods"] != pytest.approx(b["loglikelihoods"], abs=1e-3) for u, b in zip(unmerged, base_preds))
