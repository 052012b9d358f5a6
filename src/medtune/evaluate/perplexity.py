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

    @property
    def perplexity(self) -> float:
        import math

        return math.exp(self.nll_sum / self.tokens) if self.tokens else math.nan


def token_stream(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> list[int]:
    ids: list[int] = tokenizer.encode("\n\n".join(texts))
    return ids[:max_tokens] if max_tokens else ids


@torch.inference_mode()
def sliding_window_nll(model: Any, ids: Sequence[int], *, window: int, stride: int, progress: bool = True) -> PerplexityResult:
    from tqdm.auto import tqdm

    if not 0 < stride <= window:
        raise ValueError(f"stride must be in (0, window]; got stride={stride}, window={window}")
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    seq = torch.tensor(list(ids), device=device)
    nlls, counts = [], []
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
        nlls.append(float(-logp[torch.arange(new, device=device), target].sum()))
        counts.append(new)
        prev_end = end
        if end == len(seq):
            break
    return PerplexityResult(sum(counts), sum(nlls), tuple(nlls), tuple(counts))
