"""Batched log-likelihood of multiple-choice continuations, with shared-prefix reuse.

What lm-eval computes for each (context, choice) pair — the summed log-probability of the choice's
tokens after the context — computed with less work:

* every choice of an item shares the item's context, so the context is run once; its logits at
  the last position score the first token of every choice, and its KV cache serves the remaining
  tokens of multi-token choices (run for all choices of a batch at once);
* a token prefix shared by every request of a task (few-shot exemplars, a fixed description) is
  run once per task and its KV cache reused for every batch, held once and broadcast to the batch's
  rows (:class:`_SharedPrefixLayer`);
* logits (hidden state @ LM head) are computed only at the positions that are scored;
* batches are formed by a token budget over length-sorted requests, counting the tokens each
  request adds beyond the shared prefix (:func:`_batches`).

Requests longer than the model's maximum length are left-truncated per choice exactly as lm-eval
does (``(context + choice)[-(max_length + 1):][:-1]``) and scored without sharing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from medtune.evaluate.metrics import check_loglikelihoods
from medtune.evaluate.requests import McRequest

MIN_SHARED_PREFIX = 16
"""Below this many tokens, a task-wide shared prefix is not worth a separate cache."""
PREFIX_BUDGET_FACTOR = 8
"""A batch's rows x (shared prefix + padded width) stays within this many times the token budget (see _batches)."""


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


def _batches(units: list[_Unit], order: list[int], budget: int, prefix: int = 0) -> list[list[int]]:
    """Consecutive units of ``order`` while (rows x padded width) stays within ``budget`` tokens, the
    width counting a unit's tokens beyond the ``prefix`` tokens every unit shares.

    Why the shared prefix is left out: it is run once per task, and its keys/values are held once and
    broadcast to the rows (:class:`_SharedPrefixLayer`), so what a batch holds through its forward is
    its own: its keys/values in every layer and one layer's activations at a time, per budget token
    about 2 x kv_dim x layers + 3 x intermediate values. The prefix costs memory only while one
    layer's attention runs: its keys/values concatenated to each row's and (GQA under a padding mask)
    repeated to every head, 2 x (kv_dim + hidden) values per prefix token and row -- 8 to 36 times
    less (Llama-3.2-1B 8x, Llama-3-8B and SmolLM2 11x, Llama-2-7B 36x). So rows x (prefix + width)
    is also held to :data:`PREFIX_BUDGET_FACTOR` x ``budget``: that transient stays about the size of
    what the budget admits, however short the items are next to the prefix.
    """
    batches: list[list[int]] = []
    cur: list[int] = []
    width = cur_rows = 0
    for u in order:
        # Rows a unit adds: its context, plus one row per multi-token choice in the continuation pass.
        rows = 1 + sum(1 for c in units[u].choices if len(c) > 1)
        cost = len(units[u].context) - prefix + max(len(c) for c in units[u].choices)
        grown, grown_rows = max(width, cost), cur_rows + rows
        if cur and (grown * grown_rows > budget or (prefix + grown) * grown_rows > PREFIX_BUDGET_FACTOR * budget):
            batches.append(cur)
            cur, width, cur_rows = [], 0, 0
        cur.append(u)
        cur_rows += rows
        width = max(width, cost)
    if cur:
        batches.append(cur)
    return batches


class _SharedPrefixLayer(DynamicLayer):
    """One layer's cache for a batch after the shared prefix: the prefix's keys/values held once (batch 1)
    and broadcast to every row, then the rows' own.

    The default way (copy the prefix's cache and ``batch_repeat_interleave`` it) keeps rows x prefix
    keys/values in every layer for the whole forward; here only the rows' own tokens are stored, and
    the concatenation attention reads is made per layer, for that layer's call only."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int):
        super().__init__()
        self.prefix_keys, self.prefix_values = keys, values  # (1, kv_heads, prefix, head_dim)
        self.rows = rows
        self.lazy_initialization(keys, values)
        self.keys = keys.new_empty((rows, *keys.shape[1:-2], 0, keys.shape[-1]))  # (rows, kv_heads, 0, head_dim)
        self.values = values.new_empty((rows, *values.shape[1:-2], 0, values.shape[-1]))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return (torch.cat([self.prefix_keys.expand(self.rows, -1, -1, -1), self.keys], dim=-2),
                torch.cat([self.prefix_values.expand(self.rows, -1, -1, -1), self.values], dim=-2))

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.keys.shape[-2]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]
        self.rows = len(indices)


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
        for batch in _batches(units, order, self.token_budget, p):
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

    def _prefix_cache(self, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer, the prefix's (keys, values), (1, kv_heads, prefix, head_dim) each; None when a layer's
        cache is not a plain growing one (sliding-window or linear attention), then nothing is shared."""
        ids = torch.tensor([list(prefix)], device=self.device)
        cache = self.decoder(input_ids=ids, use_cache=True).past_key_values
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            return None
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _score_batch(self, units: list[_Unit], prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, p: int
                     ) -> list[list[float]]:
        rest = [u.context[p:] for u in units]
        lens = torch.tensor([len(r) for r in rest], device=self.device)
        width = int(lens.max())
        ids = torch.full((len(units), width), 0, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(units), p + width), dtype=torch.long, device=self.device)
        mask[:, :p] = 1
        for i, r in enumerate(rest):  # right padding: each row's real tokens stay at positions p..p+len-1
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, p : p + len(r)] = 1
        cache = None if prefix is None else Cache(layers=[_SharedPrefixLayer(k, v, len(units)) for k, v in prefix])
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
