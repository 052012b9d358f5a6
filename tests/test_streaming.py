"""Replay sources read as streams: a local directory in Hub layout through datasets streaming, lazy
text files, max_tokens / limit stopping the stream, and the parallel batch tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtune.data.adapters import hub, rows
from medtune.data.adapters.text import iter_text_hub, load_text_hub
from medtune.data.reading import stream_replay
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.data.tokens import encode

WORDS = "the heart pumps blood through the body and the lungs exchange oxygen".split()


def sentence(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 7)) + f" {i}."


def hub_dir(root: Path, n: int = 60) -> Path:
    """A dataset directory as on the Hub: data/train-0000K-of-00002.jsonl, with some empty texts."""
    (root / "data").mkdir(parents=True)
    texts = ["" if i % 10 == 3 else sentence(i) for i in range(n)]
    half = n // 2
    for k, part in enumerate((texts[:half], texts[half:])):
        (root / "data" / f"train-{k:05d}-of-00002.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return root


def test_text_hub_streams_a_local_hub_directory(tmp_path, monkeypatch):
    import datasets

    root = hub_dir(tmp_path / "corpus")
    seen = []
    real = hub.load_hub
    monkeypatch.setattr(hub, "load_hub", lambda src, split: seen.append(real(src, split)) or seen[-1])
    streamed = list(iter_text_hub(SourceConfig(adapter="text_hub", hub=str(root), streaming=True), None, Rejects()))
    assert isinstance(seen[-1], datasets.IterableDataset)
    whole = load_text_hub(SourceConfig(adapter="text_hub", hub=str(root)), None, Rejects())
    assert isinstance(seen[-1], datasets.Dataset)
    expected = [(f"train:{i}", sentence(i)) for i in range(60) if i % 10 != 3]
    assert [(d.id, d.text) for d in streamed] == [(d.id, d.text) for d in whole] == expected


def counting(monkeypatch, module, name: str) -> dict[str, int]:
    """Wrap the generator ``module.name`` to count the items pulled through it."""
    pulled = {"n": 0}
    real = getattr(module, name)

    def wrapped(*a, **k):
        for item in real(*a, **k):
            pulled["n"] += 1
            yield item

    monkeypatch.setattr(module, name, wrapped)
    return pulled


class Bar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


@pytest.mark.parametrize("kind", ["hub_streaming", "txt", "jsonl"])
def test_max_tokens_stops_reading_the_source_early(tiny_llama, tmp_path, monkeypatch, kind):
    from transformers import AutoTokenizer

    n = 3000
    if kind == "hub_streaming":
        src = SourceConfig(adapter="text_hub", hub=str(hub_dir(tmp_path / "c", n)), streaming=True, max_tokens=50)
        pulled = counting(monkeypatch, hub, "hub_rows")
    else:
        path = tmp_path / f"c.{kind}"
        lines = [sentence(i) if kind == "txt" else json.dumps({"text": sentence(i)}) for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
        src = SourceConfig(adapter="text", path=str(path), max_tokens=50)
        pulled = counting(monkeypatch, rows, "iter_lines")
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    bar = Bar()
    cache = stream_replay(src, tmp_path, Rejects(), tok, tmp_path / "cache" / "0.ids", bar)
    assert int(cache.offsets[-1]) == 50 == bar.n  # exactly the cap: the last document is cut
    assert 0 < pulled["n"] < n // 4, pulled  # the stream stopped soon after the cap
    texts = [sentence(i) for i in range(n) if not (kind == "hub_streaming" and i % 10 == 3)]
    want = np.concatenate([np.array(t) for t in tok(texts[: len(cache.lengths)], add_special_tokens=False)["input_ids"]])
    assert (cache.reader().all() == want[:50]).all()


def test_limit_caps_the_documents_of_a_stream(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    path = tmp_path / "c.txt"
    path.write_text("".join(sentence(i) + "\n\n" for i in range(100)))  # blank lines are not documents
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    cache = stream_replay(SourceConfig(adapter="text", path=str(path), limit=7), tmp_path, Rejects(), tok,
                          tmp_path / "x.ids", Bar())
    assert len(cache.lengths) == 7
    assert cache.lengths.tolist() == [len(t) for t in tok([sentence(i) for i in range(7)], add_special_tokens=False)["input_ids"]]


def test_batch_encoding_gives_the_ids_of_the_tokenizer_call(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    texts = [sentence(i) for i in range(200)] + ["", "  Paris is the capital of France.\u2028 Rivers flow."]
    ids, lengths = encode(tok, texts)
    want = tok(texts, add_special_tokens=False)["input_ids"]
    assert lengths.tolist() == [len(w) for w in want]
    assert ids.tolist() == [x for w in want for x in w]


def test_streaming_is_for_hub_sources():
    with pytest.raises(ValueError, match="streaming applies to Hub sources"):
        SourceConfig(adapter="text", path="x.txt", streaming=True)


def test_an_empty_replay_source_is_an_error(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from medtune.errors import DataError

    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no items in source blank: the source is empty"):
        stream_replay(SourceConfig(adapter="text", name="blank", path=str(path)), tmp_path, Rejects(),
                      AutoTokenizer.from_pretrained(str(tiny_llama)), tmp_path / "x.ids", Bar())


def sequential_cache(tok, texts: list[str], cap: int | None) -> np.ndarray:
    ids = np.concatenate([np.array(t, dtype=np.int64) for t in tok(texts, add_special_tokens=False)["input_ids"]])
    return ids if cap is None else ids[:cap]


@pytest.mark.parametrize("cap", [None, 5000, 2345])
def test_reading_ahead_in_many_batches_gives_the_sequential_ids(tiny_llama, tmp_path, monkeypatch, cap):
    """Batches of ~512 characters (about 50 of them): each is tokenized in the background while the
    one before is written; the cache is the whole stream's ids, cut exactly at the cap."""
    from transformers import AutoTokenizer

    from medtune.data import reading

    monkeypatch.setattr(reading, "BATCH_CHARS", 512)
    texts = [sentence(i) for i in range(600)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(texts) + "\n")
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    submitted = counting_submits(monkeypatch, reading)
    bar = Bar()
    cache = stream_replay(SourceConfig(adapter="text", path=str(path), max_tokens=cap), tmp_path, Rejects(), tok,
                          tmp_path / "x.ids", bar)
    want = sequential_cache(tok, texts, cap)
    assert (cache.reader().all() == want).all() and int(cache.offsets[-1]) == len(want) == bar.n
    assert submitted["n"] > 10  # it did run in batches


def counting_submits(monkeypatch, reading) -> dict[str, int]:
    """Count the batches handed to the tokenizing thread."""
    n = {"n": 0}
    real = reading.encodings

    def wrapped(*a, **k):
        n["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(reading, "encodings", wrapped)
    return n


def test_a_cap_is_exact_when_later_text_has_many_more_tokens_per_character(tiny_llama, tmp_path, monkeypatch):
    """The read-ahead bound (twice the tokens per character so far) fails on purpose: words first,
    then digit strings of one token per character. The cache is still cut exactly at the cap, and
    reading stops within a few batches of it."""
    from transformers import AutoTokenizer

    from medtune.data import reading

    monkeypatch.setattr(reading, "BATCH_CHARS", 512)
    texts = [sentence(i) for i in range(100)] + [" ".join(str(i * 7919 + k) for k in range(40)) for i in range(400)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(texts) + "\n")
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    lengths = [len(t) for t in tok(texts, add_special_tokens=False)["input_ids"]]
    words_rate = sum(lengths[:100]) / sum(map(len, texts[:100]))
    assert min(n / len(t) for n, t in zip(lengths[100:], texts[100:])) > 2 * words_rate  # the bound does fail
    cap = len(sequential_cache(tok, texts, None)) // 2
    pulled = counting(monkeypatch, rows, "iter_lines")
    cache = stream_replay(SourceConfig(adapter="text", path=str(path), max_tokens=cap), tmp_path, Rejects(), tok,
                          tmp_path / "x.ids", Bar())
    assert (cache.reader().all() == sequential_cache(tok, texts, cap)).all()
    assert pulled["n"] < 450


def test_an_error_in_the_tokenizing_thread_reaches_the_caller(tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from medtune.data import reading

    def broken(tokenizer, texts):
        raise RuntimeError("tokenizer failed")

    monkeypatch.setattr(reading, "encodings", broken)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(sentence(i) for i in range(50)) + "\n")
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        stream_replay(SourceConfig(adapter="text", path=str(path)), tmp_path, Rejects(),
                      AutoTokenizer.from_pretrained(str(tiny_llama)), tmp_path / "x.ids", Bar())


def test_a_bad_row_after_many_batches_names_its_line_while_a_batch_is_in_flight(tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from medtune.data import reading
    from medtune.errors import DataError

    monkeypatch.setattr(reading, "BATCH_CHARS", 512)
    lines = [json.dumps({"text": sentence(i)}) for i in range(300)]
    lines[250] = '{"text": 7}'
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    submitted = counting_submits(monkeypatch, reading)
    with pytest.raises(DataError, match=r"c\.jsonl.*line 251.*text.*expected a string"):
        stream_replay(SourceConfig(adapter="text", path=str(path)), tmp_path, Rejects(),
                      AutoTokenizer.from_pretrained(str(tiny_llama)), tmp_path / "x.ids", Bar())
    assert submitted["n"] > 10
