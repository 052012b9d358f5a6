"""Packing: documents -> fixed-length training blocks, with the source of every token kept.

Documents are concatenated with one EOS after each, then cut into blocks of ``block_size``.
A parallel array gives each token's source, so the token share per source and group is measured on
the blocks that will actually be trained on.

Share accounting: EOS separators and padding belong to no source (index ``-1``); they are counted in
``eos_tokens`` / ``pad_tokens`` and left out of ``source_tokens`` and :meth:`PackResult.realised_share`,
matching the document-token accounting of :mod:`medtune.data.mixing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medtune.data.mixing import Doc
from medtune.errors import MedtuneError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
"""Label value the loss skips (padding)."""
NO_SOURCE = -1
"""``token_source`` value for EOS separators and padding."""


def group_share(source_tokens: dict[str, int], groups: dict[str, str], group: str) -> float:
    """Fraction of the document tokens (EOS, padding excluded) whose source is in ``group``."""
    total = sum(source_tokens.values())
    if total == 0:
        return 0.0
    return sum(n for s, n in source_tokens.items() if groups[s] == group) / total


@dataclass
class PackResult:
    """Packed blocks plus per-token provenance. Arrays are ``(n_blocks, block_size)``."""

    input_ids: np.ndarray
    """int64 token ids."""
    attention_mask: np.ndarray
    """int64: 1 for real tokens (EOS included), 0 for padding."""
    token_source: np.ndarray
    """int32 index into ``sources`` per token; :data:`NO_SOURCE` for EOS and padding."""
    answer_mask: np.ndarray
    """uint8: 1 on the tokens answer-only loss trains on (each document's answer and its EOS; every
    token of general text), 0 elsewhere and on padding."""
    sources: list[str]
    """Source names, in order of first appearance."""
    groups: dict[str, str]
    """Source -> group (``domain`` / ``general``)."""
    block_size: int
    source_tokens: dict[str, int]
    """Document tokens per source on the kept blocks (EOS and padding excluded)."""
    eos_tokens: int
    """EOS separators on the kept blocks (and the BOS leading each document, where the tokenizer adds one)."""
    pad_tokens: int
    """Padding added to the last block (``drop_tail=False``)."""
    tail_dropped_tokens: int
    """Tokens (EOS included) of the partial last block that ``drop_tail=True`` threw away."""

    @property
    def blocks(self) -> list[list[int]]:
        return self.input_ids.tolist()

    @property
    def labels(self) -> np.ndarray:
        """``input_ids`` with :data:`IGNORE_INDEX` on padding."""
        return np.where(self.attention_mask == 1, self.input_ids, IGNORE_INDEX)

    def realised_share(self, group: str) -> float:
        """Fraction of the kept document tokens (EOS, padding excluded) whose source is in ``group``."""
        return group_share(self.source_tokens, self.groups, group)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` as ``torch.LongTensor`` ``(n_blocks, block_size)``."""
        import torch

        return {
            "input_ids": torch.from_numpy(self.input_ids.copy()),
            "attention_mask": torch.from_numpy(self.attention_mask.copy()),
            "labels": torch.from_numpy(self.labels),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts for the data report."""
        return {
            "blocks": int(self.input_ids.shape[0]), "block_size": self.block_size,
            "source_tokens": dict(self.source_tokens), "eos_tokens": self.eos_tokens,
            "pad_tokens": self.pad_tokens, "tail_dropped_tokens": self.tail_dropped_tokens,
            "general_share": self.realised_share("general"),
        }


ATTEND = 1
"""Bit of the shard ``mask`` byte: a real token (EOS included), not padding."""
ANSWER = 2
"""Bit of the shard ``mask`` byte: a token answer-only loss trains on."""


def doc_stream(tokens: np.ndarray, lengths: np.ndarray, source: np.ndarray, answer_start: np.ndarray,
               eos_id: int, dtype: Any = np.int64, bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents given flat, each followed by EOS (and led by BOS when ``bos_id`` is given): ``(ids,
    source, answer)``, each ``(sum(lengths + 1 [+ 1]),)``.

    ``tokens`` is the documents' tokens back to back, ``(sum(lengths),)``; ``source`` and
    ``answer_start`` are per document. ``source`` is :data:`NO_SOURCE` on the EOS and BOS; ``answer``
    (bool) is true from each document's answer start (capped at its length) through its EOS, which is
    the span answer-only loss trains on (every token of general text, whose answer start is 0).
    BOS: evaluation contexts start with it where the tokenizer adds one (``tokenizer.encode``), so the
    training documents do too (see :func:`medtune.data.build.bos_id`).
    """
    lead = 0 if bos_id is None else 1
    lengths = np.asarray(lengths, dtype=np.int64)
    span = lengths + 1 + lead
    ends = np.cumsum(span)
    total = int(ends[-1]) if len(ends) else 0
    ids = np.empty(total, dtype=dtype)
    eos = np.zeros(total, dtype=bool)
    eos[ends - 1] = True
    bos = np.zeros(total, dtype=bool)
    if lead:
        bos[ends - span] = True
        ids[bos] = bos_id
    ids[~(eos | bos)] = tokens
    ids[eos] = eos_id
    src = np.repeat(np.asarray(source, dtype=np.int32), span)
    src[eos | bos] = NO_SOURCE
    offset = np.arange(total, dtype=np.int64) - np.repeat(ends - span, span) - lead  # position inside the document
    answer = offset >= np.repeat(np.minimum(np.asarray(answer_start, dtype=np.int64), lengths), span)
    return ids, src, answer


def _stream(docs: Sequence[Doc], eos_id: int, source_index: dict[str, int],
            bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`doc_stream` of in-memory documents."""
    lengths = np.fromiter((len(d.tokens) for d in docs), dtype=np.int64, count=len(docs))
    tokens = np.fromiter((t for d in docs for t in d.tokens), dtype=np.int64, count=int(lengths.sum()))
    return doc_stream(tokens, lengths, np.fromiter((source_index[d.source] for d in docs), np.int32, len(docs)),
                      np.fromiter((d.answer_start for d in docs), np.int64, len(docs)), eos_id, bos_id=bos_id)


def pack(docs: Sequence[Doc], block_size: int, eos_id: int, drop_tail: bool = False,
         pad_id: int | None = None, bos_id: int | None = None) -> PackResult:
    """Concatenate ``docs`` with an EOS after each and cut into ``block_size`` blocks.

    The last, partial block is dropped (``drop_tail=True``; its size is ``tail_dropped_tokens``) or
    padded with ``pad_id`` (required then), with ``attention_mask`` 0 and label -100 on the padding.
    """
    if block_size < 1:
        raise MedtuneError(f"block_size must be at least 1, got {block_size}")
    if not drop_tail and pad_id is None:
        raise MedtuneError("pack: pad_id is required to pad the last block (or set drop_tail=True)")
    sources = list(dict.fromkeys(d.source for d in docs))
    groups: dict[str, str] = {}
    for d in docs:
        if groups.setdefault(d.source, d.group) != d.group:
            raise MedtuneError(f"source {d.source!r} appears in groups {groups[d.source]!r} and {d.group!r}")
    ids, src, answer = _stream(docs, eos_id, {s: i for i, s in enumerate(sources)}, bos_id)
    tail = len(ids) % block_size
    mask = np.ones(len(ids), dtype=np.int64)
    pad = 0
    if tail and drop_tail:
        ids, src, mask, answer = ids[:-tail], src[:-tail], mask[:-tail], answer[:-tail]
    elif tail:
        pad = block_size - tail
        ids = np.concatenate([ids, np.full(pad, pad_id, dtype=np.int64)])
        src = np.concatenate([src, np.full(pad, NO_SOURCE, dtype=np.int32)])
        mask = np.concatenate([mask, np.zeros(pad, dtype=np.int64)])
        answer = np.concatenate([answer, np.zeros(pad, dtype=bool)])
    counts = np.bincount(src[src != NO_SOURCE], minlength=len(sources))
    return PackResult(
        input_ids=ids.reshape(-1, block_size), attention_mask=mask.reshape(-1, block_size),
        token_source=src.reshape(-1, block_size), answer_mask=answer.astype(np.uint8).reshape(-1, block_size),
        sources=sources, groups=groups, block_size=block_size,
        source_tokens={s: int(counts[i]) for i, s in enumerate(sources)},
        eos_tokens=int(np.count_nonzero((src == NO_SOURCE) & (mask == 1))), pad_tokens=pad,
        tail_dropped_tokens=tail if drop_tail else 0,
    )
