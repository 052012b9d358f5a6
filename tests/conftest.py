"""Shared fixtures: a tiny random LLaMA model with a tiny tokenizer, built on disk once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FEATURE_STUDY = Path(__file__).resolve().parent / "fixtures" / "feature-study.yaml"
"""The study the study tests run: the demo sample's files with a replay variant and every averaging kind."""

TINY_TEXT = [
    "Question: Is aspirin an antiplatelet drug? Answer: yes",
    "The heart pumps blood through the body. The lungs exchange oxygen and carbon dioxide.",
    "Paris is the capital of France. Rivers flow into the sea.",
    "A. yes B. no C. maybe D. none Abstract: Context: Choices:",
]


def make_tiny_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_TEXT * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.save_pretrained(str(out))
    return fast


def make_tiny_llama(out: Path, seed: int = 0) -> Path:
    """hidden 32, 2 layers, 4 heads (2 KV heads), vocab 400: a real LlamaForCausalLM in ~0.1 s."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


def make_random_adapter(base: Path, out: Path, seed: int, std: float) -> Path:
    """A LoRA adapter (all linear layers, r=4) on ``base`` with random non-zero B, so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(autouse=True)
def _restore_environment():
    """Tests that call the CLI in-process (``--no-progress`` sets ``HF_HUB_DISABLE_PROGRESS_BARS`` for the
    processes it launches) must not change the environment of later tests' subprocesses."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
