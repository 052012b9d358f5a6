"""Multiple-choice requests as lm-evaluation-harness tokenizes them.

For each item, lm-eval's ``_encode_pair`` encodes ``context + continuation`` as a whole and takes
the continuation as the tokens past the context's own token length, after moving trailing spaces of
the context onto the continuation. The tokenizer adds its default special tokens (SmolLM2 adds no
BOS). Every choice of an item therefore shares the same context tokens, which the scorer computes
once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medtune.data.prompts import EvalPrompt


@dataclass(frozen=True)
class McRequest:
    """One multiple-choice item, tokenized."""

    id: str
    context: tuple[int, ...]
    """Context token ids (for an empty context: the prefix token, BOS or else EOS)."""
    choices: tuple[tuple[int, ...], ...]
    """Continuation token ids per choice."""
    gold: int
    choice_chars: tuple[int, ...]
    """Length in characters of each choice string without the delimiter (for acc_norm)."""
    group: str = ""
    """Breakdown key (e.g. MedMCQA subject); empty if none."""


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13 ``TemplateLM._encode_pair`` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def prefix_token_id(tokenizer: Any) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def build_request(tokenizer: Any, prompt: EvalPrompt, group: str = "") -> McRequest:
    """Tokenize one prompt. Contexts may differ per choice only through BPE merges at the boundary;
    lm-eval uses the context's own encoding for every choice, and so do we."""
    ctx_ids: list[int] | None = None
    conts: list[tuple[int, ...]] = []
    for cont in prompt.continuations:
        if prompt.context == "":
            ctx, c = [prefix_token_id(tokenizer)], tokenizer.encode(cont)
        else:
            ctx, c = encode_pair(tokenizer, prompt.context, cont)
        ctx_ids = ctx if ctx_ids is None else ctx_ids
        conts.append(tuple(c))
    assert ctx_ids is not None, "a request needs at least one choice"
    chars = prompt.choice_chars or tuple(len(c) for c in prompt.continuations)
    return McRequest(prompt.id, tuple(ctx_ids), tuple(conts), prompt.gold, chars, group)
