"""Packing: exact small blocks, tail handling, per-source token shares on the blocks."""

from __future__ import annotations

import numpy as np
import pytest

from medtune.data.mixing import Doc
from medtune.data.packing import IGNORE_INDEX, pack
from medtune.errors import MedtuneError

DOCS = [Doc("med", "domain", [1, 2, 3]), Doc("wiki", "general", [4, 5])]


def test_eos_after_each_doc_and_tail_dropped():
    # stream 1 2 3 0 4 5 0 -> [1 2 3] [0 4 5], tail [0]
    packed = pack(DOCS, block_size=3, eos_id=0, drop_tail=True)
    assert packed.blocks == [[1, 2, 3], [0, 4, 5]]
    assert packed.tail_dropped_tokens == 1 and packed.pad_tokens == 0
    assert packed.source_tokens == {"med": 3, "wiki": 2} and packed.eos_tokens == 1
    assert packed.realised_share("general") == pytest.approx(2 / 5)


def test_tail_padded_with_mask_and_ignored_labels():
    packed = pack(DOCS, block_size=3, eos_id=0, pad_id=9)
    assert packed.blocks == [[1, 2, 3], [0, 4, 5], [0, 9, 9]]
    assert packed.attention_mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert packed.labels.tolist() == [[1, 2, 3], [0, 4, 5], [0, IGNORE_INDEX, IGNORE_INDEX]]
    assert packed.token_source.tolist() == [[0, 0, 0], [-1, 1, 1], [-1, -1, -1]]
    assert packed.pad_tokens == 2 and packed.tail_dropped_tokens == 0 and packed.eos_tokens == 2


def test_tail_dropped_tokens_leave_the_source_counts():
    # stream 1 2 3 0 4 5 0 with block 4 -> [1 2 3 0], tail [4 5 0] dropped: wiki loses its tokens
    packed = pack(DOCS, block_size=4, eos_id=0, drop_tail=True)
    assert packed.blocks == [[1, 2, 3, 0]]
    assert packed.tail_dropped_tokens == 3
    assert packed.source_tokens == {"med": 3, "wiki": 0}
    assert packed.realised_share("general") == 0.0


def test_exact_fit_needs_no_padding():
    packed = pack([Doc("med", "domain", [1, 2]), Doc("med", "domain", [3])], block_size=5, eos_id=0, pad_id=9)
    assert packed.blocks == [[1, 2, 0, 3, 0]] and packed.pad_tokens == 0


def test_padding_without_pad_id_is_an_error():
    with pytest.raises(MedtuneError, match="pad_id"):
        pack(DOCS, block_size=3, eos_id=0)


def test_to_tensors_gives_long_tensors():
    tensors = pack(DOCS, block_size=3, eos_id=0, pad_id=9).to_tensors()
    assert set(tensors) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype.is_floating_point is False and t.shape == (3, 3) for t in tensors.values())
    assert str(tensors["input_ids"].dtype) == "torch.int64"
    assert tensors["labels"][2].tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]


def test_large_pack_keeps_every_token_in_order():
    rng = np.random.default_rng(0)
    docs = [Doc("s", "domain", rng.integers(1, 1000, int(n)).tolist()) for n in rng.integers(50, 401, 2000)]
    packed = pack(docs, block_size=512, eos_id=0, drop_tail=True)
    stream = [t for d in docs for t in [*d.tokens, 0]]
    n = len(stream) // 512 * 512
    assert packed.input_ids.reshape(-1).tolist() == stream[:n]
    assert packed.tail_dropped_tokens == len(stream) - n
    assert packed.source_tokens["s"] + packed.eos_tokens == n


def test_empty_input_gives_no_blocks():
    packed = pack([], block_size=4, eos_id=0, drop_tail=True)
    assert packed.input_ids.shape == (0, 4) and packed.source_tokens == {}
