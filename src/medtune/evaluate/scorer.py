"""Batched log-likelihood of multiple-choice continuations, with shared-prefix reuse.

What lm-eval computes for each (context, choice) pair — the summed log-probability of the choice's
tokens after the context — computed with less work:

* every choice of an item shares the item's context, so the context is run once; its logits at
  the last position score the first token of every choice, and its KV cache serves the remaining
  tokens of multi-token choices (run for all choices of a batch at once);
* a token prefix shared by every request of a task (few-shot exemplars, a fixed description) is
  run once per task and its KV cache reused for every batch;
* logits (hidden state @ LM head) are computed only at the positions that are scored;
* batches are formed by a token budget over length-sorted requests.

Requests longer than the model's maximum length are left-truncated per choice exactly as lm-eval
does (``(context + choice)[-(max_length + 1):][:-1]``) and scored without sharing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medtune.evaluate.metrics import check_loglikelihoods
from medtune.evaluate.requests import McRequest

MIN_SHARED_PREFIX = 16
"""Below this many tokens, a task-wide shared prefix is not worth a separate cache."""


@dataclass(frozen=True)
class _Unit:
    """One context with the choices scored after it (an item, or one overflowing choice)."""

    req: int
    choice_ids: tuple[int, ...]
    context: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]


def max_model_length(model: Any, default: int = 2048) -> int:
    """lm-eval's HFLM rule: the first of n_positions / max_position_embeddings / n_ctx on the config."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value:
            return int(value)
    return default


def _units(requests: Sequence[McRequest], max_length: int) -> list[_Unit]:
    units = []
    for i, r in enumerate(requests):
        if all(len(r.context) + len(c) <= max_length + 1 for c in r.choices):
            units.append(_Unit(i, tuple(range(len(r.choices))), r.context, r.choices))
            continue
        for j, c in enumerate(r.choices):  # lm-eval's left truncation, per choice
            whole = (r.context + c)[-(max_length + 1):]
            units.append(_Unit(i, (j,), whole[: len(whole) - len(c)], (c,)))
    return units


def shared_prefix_length(contexts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving at least one token in every context."""
    if len(contexts) < 2:
        return 0
    first = contexts[0]
    n = min(len(c) for c in contexts) - 1
    for k in range(max(n, 0)):
        tok = first[k]
        if any(c[k] != tok for c in contexts):
            return k
    return max(n, 0)


def _batches(units: list[_Unit], order: list[int], budget: int) -> list[list[int]]:
    batches: list[list[int]] = []
    cur: list[int] = []
    width = cur_rows = 0
    for u in order:
        # Rows a unit adds: its context, plus one row per multi-token choice in the continuation pass.
        rows = 1 + sum(1 for c in units[u].choices if len(c) > 1)
        cost = len(units[u].context) + max(len(c) for c in units[u].choices)
        if cur and max(width, cost) * (cur_rows + rows) > budget:
            batches.append(cur)
            cur, width, cur_rows = [], 0, 0
        cur.append(u)
        cur_rows += rows
        width = max(width, cost)
    if cur:
        batches.append(cur)
    return batches


class Scorer:
    """Scores :class:`McRequest` lists with a causal LM (a transformers model, optionally PEFT-wrapped)."""

    def __init__(self, model: Any, *, token_budget: int = 4096, max_length: int | None = None):
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.token_budget = token_budget
        self.max_length = max_length or max_model_length(model)

    @torch.inference_mode()
    def loglikelihoods(self, requests: Sequence[McRequest], *, progress: bool = True, desc: str = "scoring") -> list[list[float]]:
        """Per request, the summed log-likelihood of each choice (all finite: ``desc``, the task, names a bad one)."""
        from tqdm.auto import tqdm

        units = _units(requests, self.max_length)
        out: list[list[float]] = [[0.0] * len(r.choices) for r in requests]
        p = shared_prefix_length([u.context for u in units])
        prefix = self._prefix_cache(units[0].context[:p]) if p >= MIN_SHARED_PREFIX else None
        if prefix is None:
            p = 0
        order = sorted(range(len(units)), key=lambda u: -len(units[u].context))
        bar = tqdm(total=len(requests), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
        done_reqs: set[int] = set()
        for batch in _batches(units, order, self.token_budget):
            scores = self._score_batch([units[u] for u in batch], prefix, p)
            for u, s in zip(batch, scores):
                for j, v in zip(units[u].choice_ids, s):
                    out[units[u].req][j] = v
                if units[u].req not in done_reqs:
                    done_reqs.add(units[u].req)
                    bar.update(1)
        bar.close()
        check_loglikelihoods(out, [r.id for r in requests], desc)
        return out

    def _prefix_cache(self, prefix: Sequence[int]) -> Any:
        ids = torch.tensor([list(prefix)], device=self.device)
        return self.decoder(input_ids=ids, use_cache=True).past_key_values

    def _score_batch(self, units: list[_Unit], prefix: Any, p: int) -> list[list[float]]:
        rest = [u.context[p:] for u in units]
        lens = torch.tensor([len(r) for r in rest], device=self.device)
        width = int(lens.max())
        ids = torch.full((len(units), width), 0, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(units), p + width), dtype=torch.long, device=self.device)
        mask[:, :p] = 1
        for i, r in enumerate(rest):  # right padding: each row's real tokens stay at positions p..p+len-1
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, p : p + len(r)] = 1
        cache = None
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(units))
        needs_cache = any(len(c) > 1 for u in units for c in u.choices)
        positions = (p + torch.arange(width, device=self.device)).unsqueeze(0).expand(len(units), -1)
        outputs = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                               past_key_values=cache, use_cache=needs_cache)
        last = outputs.last_hidden_state[torch.arange(len(units)), lens - 1]  # (batch, hidden)
        first_lp = torch.log_softmax(self.head(last).float(), dim=-1)  # (batch, vocab)
        scores = [[float(first_lp[i, c[0]]) for c in u.choices] for i, u in enumerate(units)]
        if needs_cache:
            self._continue(units, scores, outputs.past_key_values, mask, p + lens)
        return scores

    def _continue(self, units: list[_Unit], scores: list[list[float]], cache: Any, ctx_mask: torch.Tensor,
                  ctx_len: torch.Tensor) -> None:
        """Tokens 2.. of multi-token choices: one forward over every (item, choice) pair, on the context cache."""
        pairs = [(i, j) for i, u in enumerate(units) for j, c in enumerate(u.choices) if len(c) > 1]
        rows = torch.tensor([i for i, _ in pairs], device=self.device)
        width = max(len(units[i].choices[j]) - 1 for i, j in pairs)
        ids = torch.zeros((len(pairs), width), dtype=torch.long, device=self.device)
        cont_mask = torch.zeros((len(pairs), width), dtype=torch.long, device=self.device)
        for k, (i, j) in enumerate(pairs):
            c = units[i].choices[j]
            ids[k, : len(c) - 1] = torch.tensor(c[:-1])
            cont_mask[k, : len(c) - 1] = 1
        cache.batch_select_indices(rows)
        mask = torch.cat([ctx_mask[rows], cont_mask], dim=1)
        positions = ctx_len[rows].unsqueeze(1) + torch.arange(width, device=self.device)
        hidden = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                              past_key_values=cache, use_cache=False).last_hidden_state  # (pairs, width, hidden)
        sel = cont_mask.bool()
        logp = torch.log_softmax(self.head(hidden[sel]).float(), dim=-1)  # (scored tokens, vocab)
        targets = torch.cat([torch.tensor(units[i].choices[j][1:], device=self.device) for i, j in pairs])
        token_lp = logp[torch.arange(len(targets), device=self.device), targets]
        offset = 0
        for i, j in pairs:
            n = len(units[i].choices[j]) - 1
            scores[i][j] += float(token_lp[offset : offset + n].sum())
            offset += n


def reference_loglikelihoods(model: Any, requests: Sequence[McRequest], max_length: int | None = None) -> list[list[float]]:
    """The plain lm-eval computation, one (context + choice) sequence at a time: the ground truth for tests."""
    max_length = max_length or max_model_length(model)
    out = []
    with torch.inference_mode():
        for r in requests:
            row = []
            for c in r.choices:
                inp = list(r.context + c)[-(max_length + 1):][:-1]
                logits = model(torch.tensor([inp])).logits[0].float()
                lp = torch.log_softmax(logits[len(inp) - len(c):], dim=-1)
                row.append(float(lp[torch.arange(len(c)), torch.tensor(c)].sum()))
            out.append(row)
    return out
