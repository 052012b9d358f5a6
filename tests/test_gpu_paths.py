"""What every stage needs on a user's GPU, checked on CPU: few-shot scoring batches sized by the tokens each
item adds, one BOS in chat-templated prompts, merges on a Hub-id base, and a clear error when the ranks of a
multi-node run do not share ``out``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medtune import models
from medtune.errors import MedtuneError
from medtune.evaluate.requests import McRequest
from medtune.evaluate.scorer import Scorer, reference_loglikelihoods

from conftest import make_random_adapter, make_tiny_llama

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_model(tiny_llama):
    return models.load_model(str(tiny_llama))


def spy_forward(scorer: Scorer, monkeypatch) -> list[dict]:
    """Record the keyword arguments of every decoder forward the scorer makes."""
    calls: list[dict] = []
    real = scorer.decoder.forward
    monkeypatch.setattr(scorer.decoder, "forward", lambda *a, **k: calls.append(dict(k)) or real(*a, **k))
    return calls


def few_shot_requests(prefix_len: int, own: int, n: int) -> list[McRequest]:
    """``n`` items sharing a ``prefix_len``-token prefix, each adding ``own`` tokens and three one-token choices."""
    prefix = tuple(range(3, 3 + prefix_len))
    return [McRequest(str(i), prefix + tuple(range(200 + i, 200 + i + own)), ((7,), (8,), (9,)), 0, (1, 1, 1))
            for i in range(n)]


def test_few_shot_batches_are_sized_by_the_tokens_beyond_the_shared_prefix(tiny_model, monkeypatch):
    """A 40-token shared prefix (run once, its cache reused) costs no budget: 104 tokens hold 8 items of 12 + 1 tokens."""
    reqs = few_shot_requests(40, 12, 20)
    scorer = Scorer(tiny_model, token_budget=104)
    calls = spy_forward(scorer, monkeypatch)
    got = scorer.loglikelihoods(reqs, progress=False)
    assert [tuple(c["input_ids"].shape) for c in calls] == [(1, 40), (8, 12), (8, 12), (4, 12)]
    ref = reference_loglikelihoods(tiny_model, reqs)
    assert max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r, g)) < 1e-4


def test_a_prefix_long_next_to_the_items_still_bounds_the_rows(tiny_model, monkeypatch):
    """Rows x (prefix + width) stays within 8 x the budget (the prefix's per-layer transient): 120 + 4 tokens, budget 64 -> 4 rows."""
    reqs = few_shot_requests(120, 3, 12)
    scorer = Scorer(tiny_model, token_budget=64)
    calls = spy_forward(scorer, monkeypatch)
    got = scorer.loglikelihoods(reqs, progress=False)
    assert [tuple(c["input_ids"].shape) for c in calls] == [(1, 120)] + [(4, 3)] * 3
    ref = reference_loglikelihoods(tiny_model, reqs)
    assert max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r, g)) < 1e-4


def test_scores_with_a_long_prefix_and_multi_token_choices_equal_one_sequence_at_a_time(tiny_model):
    """Batches filled by the per-item budget still give lm-eval's log-likelihoods, multi-token choices included."""
    import random

    rng = random.Random(1)
    prefix = tuple(rng.randrange(3, 300) for _ in range(150))
    reqs = [McRequest(str(i), prefix + tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 30))),
                      tuple(tuple(rng.randrange(3, 300) for _ in range(rng.randint(1, 4))) for _ in range(4)), 0, (1,) * 4)
            for i in range(20)]
    got = Scorer(tiny_model, token_budget=128).loglikelihoods(reqs, progress=False)
    ref = reference_loglikelihoods(tiny_model, reqs)
    assert max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r, g)) < 1e-4


def _cache_bytes(cache) -> int:
    """Bytes of the distinct tensor storages a cache holds (a broadcast view costs its source only)."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        for value in vars(layer).values():
            if torch.is_tensor(value):
                seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(seen.values())


def test_the_shared_prefix_cache_is_held_once_not_copied_per_row(tiny_model, monkeypatch):
    """The prefix's keys and values given to a batch of 16 rows take the memory of one copy, not 16."""
    prefix = tuple(range(3, 123))
    reqs = [McRequest(str(i), prefix + (200 + i, 201 + i), ((7, 8), (9,)), 0, (1, 1)) for i in range(16)]
    scorer = Scorer(tiny_model, token_budget=4096)
    held: list[int] = []
    real = scorer.decoder.forward

    def spy(*a, **k):
        if k.get("past_key_values") is not None and k["input_ids"].shape[0] == 16:
            held.append(_cache_bytes(k["past_key_values"]))
        return real(*a, **k)

    monkeypatch.setattr(scorer.decoder, "forward", spy)
    scorer.loglikelihoods(reqs, progress=False)
    cfg = tiny_model.config
    one_copy = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * 120 * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert held and held[0] <= one_copy


def bos_tokenizer(tiny_llama):
    """The tiny tokenizer made to add BOS itself (as Llama-3's does), with a Llama-3-style chat template
    that writes ``{{ bos_token }}`` too."""
    from tokenizers.processors import TemplateProcessing

    tok = models.load_tokenizer(str(tiny_llama))
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n\n{{ m['content'] }}<|eot|>"
                         "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n\n{% endif %}")
    assert tok.encode("heart")[0] == tok.bos_token_id
    return tok


@pytest.mark.parametrize("chat_template", [True, False])
def test_generate_mode_prompts_start_with_exactly_one_bos(tiny_llama, tiny_model, monkeypatch, chat_template):
    """A chat-templated prompt holds the template's BOS and no second one from the tokenizer; a plain one gets the tokenizer's."""
    from medtune.evaluate.run import EvalConfig, score_model

    tok = bos_tokenizer(tiny_llama)
    seen: list[torch.Tensor] = []
    real = tiny_model.generate
    monkeypatch.setattr(tiny_model, "generate", lambda **k: seen.append(k["input_ids"]) or real(**k))
    cfg = EvalConfig(data_root=str(FIXTURES), tasks="pubmedqa", mode="generate", chat_template=chat_template, limit=3,
                     max_new_tokens=1, progress=False)
    score_model(tiny_model, tok, cfg)
    ids = torch.cat(seen)
    assert ids.shape[0] == 3
    assert (ids == tok.bos_token_id).sum(dim=1).tolist() == [1, 1, 1]


def hub_cache(tmp_path: Path, monkeypatch, model_dir: Path, repo: str = "medtune-test/tiny-llama") -> str:
    """``model_dir`` laid out in a Hub cache as huggingface_hub writes it, offline; returns its Hub id."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, root / "snapshots" / ("0" * 40))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return repo


def assert_hub_base_merges_as_local(tiny_llama: Path, tmp_path: Path, monkeypatch, tuned: Path, weights: str) -> None:
    """hma on ``tuned`` gives the same ``weights`` file with the base named by its Hub id as by its directory."""
    from medtune.config import ModelConfig
    from medtune.merge.run import MergeConfig, merge

    def run(spec: str, out: str) -> dict[str, torch.Tensor]:
        done = merge(MergeConfig(base=ModelConfig(spec=spec), tuned=[str(tuned)], method="hma", alpha=0.45,
                                 ratios=[0.2, 0.7], out=str(tmp_path / out)))
        return load_file(str(done / weights))

    want = run(str(tiny_llama), "local")
    got = run(hub_cache(tmp_path, monkeypatch, tiny_llama), "hub-merge")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_hma_merge_on_a_hub_id_base_equals_the_local_directory_merge(tiny_llama, tmp_path, monkeypatch):
    """hma reads the base's layer count through the Hub cache: the merge of a Hub-id base is the local directory's."""
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.05)
    assert_hub_base_merges_as_local(tiny_llama, tmp_path, monkeypatch, adapter, "adapter_model.safetensors")


def test_streamed_full_merge_on_a_hub_id_base_reads_its_cached_snapshot(tiny_llama, tmp_path, monkeypatch):
    """A streamed merge of full checkpoints on a Hub-id base reads the base from its local Hub-cache snapshot."""
    tuned = make_tiny_llama(tmp_path / "tuned", seed=3)
    assert_hub_base_merges_as_local(tiny_llama, tmp_path, monkeypatch, tuned, "model.safetensors")


def test_streamed_merge_on_a_hub_id_without_cached_weights_asks_for_a_local_directory(tiny_llama, tmp_path, monkeypatch):
    """A Hub-id base whose cached snapshot has its config but not its weights is refused, saying a local directory is needed."""
    from medtune.config import ModelConfig
    from medtune.merge.run import MergeConfig, merge

    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_llama / "config.json", config_only / "config.json")
    tuned = make_tiny_llama(tmp_path / "tuned", seed=3)
    hub_id = hub_cache(tmp_path, monkeypatch, config_only)
    with pytest.raises(MedtuneError, match=r"medtune-test/tiny-llama.*local directory"):
        merge(MergeConfig(base=ModelConfig(spec=hub_id), tuned=[str(tuned)], method="linear", alpha=0.5,
                          out=str(tmp_path / "hub-merge")))
    assert not (tmp_path / "hub-merge").exists()


def test_a_rank_that_cannot_see_the_checkpoint_staging_directory_says_out_must_be_shared(tiny_model, tmp_path):
    """Rank 1 on another node, where rank 0's staging directory does not exist: a MedtuneError names it and the shared filesystem."""
    from medtune.train import checkpoint

    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(MedtuneError, match=r"\.staging-step-000001.*filesystem shared by all nodes"):
        checkpoint.save(tmp_path, 1, tiny_model, opt, sched, {"history": []}, 1, 2, keep=2, barrier=lambda: None)


def test_a_rank_that_cannot_see_the_built_data_says_out_must_be_shared(tmp_path, monkeypatch):
    """Rank 1 on another node, where rank 0's OUT/data does not exist: a MedtuneError names it and the shared filesystem."""
    from medtune.data import build
    from medtune.train import run
    from medtune.train.config import TrainConfig

    monkeypatch.setattr(build, "build_command", lambda *a, **k: None)  # rank 0 builds on its own node only
    with pytest.raises(MedtuneError, match=r"data.*filesystem shared by all nodes"):
        run._data(TrainConfig(out=str(tmp_path / "out")), tmp_path / "out", 1, lambda: None)
