"""Token-level perplexity on general text with a sliding window (the transformers "strided" method).

Documents are joined with blank lines into one token stream. Windows of ``window`` tokens advance by
``stride``; each window scores only its tokens not scored before, so every token after the first
is scored exactly once, with at least ``window - stride`` tokens of context once the first window
is past.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PerplexityResult:
    tokens: int
    nll_sum: float
    window_nll: tuple[float, ...]
    """Summed negative log-likelihood per window (for a bootstrap over windows)."""
    window_tokens: tuple[int, ...]
    token_nll: tuple[float, ...] = ()
    """Negative log-likelihood of every scored token, in stream order (tokens 1..tokens; token 0 is never scored)."""

    @property
    def perplexity(self) -> float:
        import math

        return math.exp(self.nll_sum / self.tokens) if self.tokens else math.nan


def scored_tokens(n_ids: int) -> int:
    """How many tokens a stream of ``n_ids`` tokens scores: all but the first, which has no context."""
    return max(n_ids - 1, 0)


def token_stream(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> list[int]:
    ids: list[int] = tokenizer.encode("\n\n".join(texts))
    return ids[:max_tokens] if max_tokens else ids


def token_documents(tokenizer: Any, texts: Sequence[str], n_tokens: int) -> list[int]:
    """For the first ``n_tokens`` tokens of :func:`token_stream`, the index of the document each belongs to
    (by the character its token starts at; a token of the blank-line separator counts for the next document)."""
    import bisect

    enc = tokenizer("\n\n".join(texts), return_offsets_mapping=True)
    starts, pos = [], 0
    for t in texts:
        starts.append(pos)
        pos += len(t) + 2
    assert list(enc["input_ids"][:n_tokens]) == token_stream(tokenizer, texts, n_tokens), "offsets of another encoding"
    # special tokens have offsets (0, 0): they belong to the first document
    return [max(bisect.bisect_right(starts, a) - 1, 0) for a, _ in enc["offset_mapping"][:n_tokens]]


def document_nll(result: PerplexityResult, docs: Sequence[int], n_docs: int) -> tuple[list[float], list[int]]:
    """(summed nll, scored tokens) per document, from a result's per-token nll and each token's document."""
    nll, count = [0.0] * n_docs, [0] * n_docs
    for d, v in zip(docs[1:], result.token_nll):  # token 0 is never scored
        nll[d] += v
        count[d] += 1
    return nll, count


@torch.inference_mode()
def sliding_window_nll(model: Any, ids: Sequence[int], *, window: int, stride: int, progress: bool = True) -> PerplexityResult:
    from tqdm.auto import tqdm

    if not 0 < stride <= window:
        raise ValueError(f"stride must be in (0, window]; got stride={stride}, window={window}")
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    seq = torch.tensor(list(ids), device=device)
    nlls, counts, per_token = [], [], []
    prev_end = 0
    starts = range(0, max(len(seq) - 1, 1), stride)
    for begin in tqdm(starts, desc="perplexity", unit="window", disable=not progress, dynamic_ncols=True):
        end = min(begin + window, len(seq))
        new = end - max(prev_end, begin + 1)  # tokens this window scores (the first token is never scored)
        if new <= 0:
            break
        hidden = decoder(input_ids=seq[begin:end].unsqueeze(0)).last_hidden_state[0, -new - 1 : -1]  # (new, hidden)
        logp = torch.log_softmax(head(hidden).float(), dim=-1)
        target = seq[end - new : end]
        token = -logp[torch.arange(new, device=device), target]  # (new,) nats
        per_token += token.tolist()
        nlls.append(float(token.sum()))
        counts.append(new)
        prev_end = end
        if end == len(seq):
            break
    return PerplexityResult(sum(counts), sum(nlls), tuple(nlls), tuple(counts), tuple(per_token))
