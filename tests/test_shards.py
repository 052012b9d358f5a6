"""Packed shards on disk: equal to in-memory packing, read back across shard files, compact dtypes,
the mix share measured on what was written, and a killed build."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medtune.data.build import DataConfig, build_command, open_blocks, prepare
from medtune.data.mixing import Doc, MixPlan
from medtune.data.packing import NO_SOURCE, pack
from medtune.data.shards import Blocks, ShardWriter, ids_dtype, write_plan
from medtune.errors import MedtuneError

FIXTURES = Path(__file__).parent / "fixtures"


def random_docs(seed: int, n: int = 60) -> list[Doc]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        src = ("med", "wiki", "books")[i % 3]
        k = int(rng.integers(1, 30))
        docs.append(Doc(src, "general" if src != "med" else "domain", rng.integers(3, 400, k).tolist(), f"{src}:{i}",
                        answer_start=int(rng.integers(0, k + 3)) if src == "med" else 0))
    return docs


def write_docs(root: Path, docs: list[Doc], block: int, shard_tokens: int, drop_tail: bool, vocab: int = 400) -> Blocks:
    """The shard writer fed through write_plan, in the documents' own order."""
    names = list(dict.fromkeys(d.source for d in docs))
    by_source = {s: [d for d in docs if d.source == s] for s in names}
    position = {id(d): i for s in names for i, d in enumerate(by_source[s])}
    plan = MixPlan(names, np.array([names.index(d.source) for d in docs], np.int32),
                   np.array([position[id(d)] for d in docs], np.int64), np.array([len(d.tokens) for d in docs], np.int64),
                   report=None)  # type: ignore[arg-type]
    writer = ShardWriter(root, block_size=block, vocab_size=vocab, sources=names,
                         groups={s: by_source[s][0].group for s in names}, eos_id=0, pad_id=9, drop_tail=drop_tail,
                         shard_tokens=shard_tokens)
    starts = {i: np.array([d.answer_start for d in by_source[s]]) for i, s in enumerate(names)}
    write_plan(writer, plan, lambda s, d, n: np.array(by_source[names[s]][d].tokens[:n]), starts, batch_docs=7)
    return Blocks(root)


@pytest.mark.parametrize("drop_tail", [True, False])
@pytest.mark.parametrize("shard_tokens", [8, 20, 10_000])
def test_shards_hold_exactly_what_pack_makes(tmp_path, drop_tail, shard_tokens):
    docs = random_docs(1)
    blocks = write_docs(tmp_path / "s", docs, block=4, shard_tokens=shard_tokens, drop_tail=drop_tail)
    ref = pack(docs, 4, eos_id=0, drop_tail=drop_tail, pad_id=9)
    got = blocks.all()
    assert (got["input_ids"] == ref.input_ids).all() and (got["attention_mask"] == ref.attention_mask).all()
    assert (got["answer_mask"] == ref.answer_mask).all() and (got["token_source"] == ref.token_source).all()
    counts = blocks.index["counts"]
    assert counts["source_tokens"] == ref.source_tokens and counts["eos_tokens"] == ref.eos_tokens
    assert (counts["pad_tokens"], counts["tail_dropped_tokens"]) == (ref.pad_tokens, ref.tail_dropped_tokens)
    n_shards = len(blocks.index["shards"])
    assert n_shards == -(-ref.input_ids.shape[0] // max(1, shard_tokens // 4))
    assert not list((tmp_path / "s").glob(".*.tmp")), "no temporary shard file left"


def test_rows_are_read_across_shard_files_in_the_order_asked(tmp_path):
    blocks = write_docs(tmp_path / "s", random_docs(2), block=4, shard_tokens=12, drop_tail=True)
    assert len(blocks.index["shards"]) > 3
    every = blocks.all()
    idx = np.array([len(blocks) - 1, 0, 4, 3, 4, 7])
    rows = blocks.rows(idx)
    for k in ("input_ids", "attention_mask", "answer_mask", "token_source"):
        assert (rows[k] == every[k][idx]).all(), k
    with pytest.raises(MedtuneError, match="out of range"):
        blocks.rows(np.array([len(blocks)]))


def test_answer_mask_starts_at_the_answer_and_covers_its_eos(tmp_path):
    docs = [Doc("med", "domain", [11, 12, 13, 14], "q", answer_start=2), Doc("wiki", "general", [21, 22], "w")]
    got = write_docs(tmp_path / "s", docs, block=4, shard_tokens=4, drop_tail=False).all()
    # stream 11 12 13 14 EOS 21 22 EOS -> answer on 13 14 EOS and on all of the general doc
    assert got["input_ids"].tolist() == [[11, 12, 13, 14], [0, 21, 22, 0]]
    assert got["answer_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert got["token_source"].tolist() == [[0, 0, 0, 0], [NO_SOURCE, 1, 1, NO_SOURCE]]


def test_token_ids_are_uint16_when_the_vocabulary_fits_else_uint32(tmp_path):
    assert ids_dtype(65_536) == np.uint16 and ids_dtype(65_537) == np.uint32
    docs = [Doc("big", "domain", [70_000, 65_535, 5], "x")]
    blocks = write_docs(tmp_path / "s", docs, block=4, shard_tokens=4, drop_tail=True, vocab=128_256)
    assert np.load(tmp_path / "s" / "00000.ids.npy").dtype == np.uint32
    assert blocks.all()["input_ids"].tolist() == [[70_000, 65_535, 5, 0]]
    small = write_docs(tmp_path / "t", random_docs(3), block=4, shard_tokens=8, drop_tail=True)
    assert np.load(small.root / "00000.ids.npy").dtype == np.uint16
    assert np.load(small.root / "00000.source.npy").dtype == np.int8


def test_unfinished_or_damaged_shards_are_refused(tmp_path):
    blocks = write_docs(tmp_path / "s", random_docs(4), block=4, shard_tokens=8, drop_tail=True)
    np.save(blocks.root / "00001.ids.npy", np.zeros((1, 4), np.uint16))
    with pytest.raises(MedtuneError, match=r"00001.ids.npy: shape \(1, 4\)"):
        Blocks(blocks.root)
    (blocks.root / "index.json").unlink()
    with pytest.raises(MedtuneError, match="not a finished data build"):
        Blocks(blocks.root)


def synthetic_medmcqa(path: Path, n: int = 400) -> Path:
    rng = random.Random(0)
    words = "heart lung blood cell drug dose fever pain nerve bone".split()
    items = [{"question": " ".join(rng.choices(words, k=rng.randint(5, 40))) + "?", "exp": None, "cop": 1 + i % 4,
              "opa": "alpha", "opb": "beta", "opc": "gamma", "opd": "delta", "subject_name": "Physiology",
              "topic_name": None, "id": f"synthetic-{i}", "choice_type": "single"} for i in range(n)]
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def data_cfg(tiny_llama: Path, tmp_path: Path, **kw) -> DataConfig:
    base = {"data_root": str(FIXTURES), "tokenizer": str(tiny_llama), "block_size": 64, "shard_tokens": 640,
            "train": [{"adapter": "medmcqa", "path": str(synthetic_medmcqa(tmp_path / "train.jsonl"))}],
            "replay": [{"adapter": "text", "path": "text/replay.txt"}, {"adapter": "text", "path": "text/replay.jsonl"}],
            "general_share": 0.2, "out": str(tmp_path / "out")}
    return DataConfig.model_validate({**base, **kw})


@pytest.mark.parametrize("strategy", ["fixed_share", "temperature", "concat"])
def test_mix_share_is_realised_on_the_written_shards(tiny_llama, tmp_path, strategy):
    c = data_cfg(tiny_llama, tmp_path, mix_strategy=strategy)
    out = build_command(c)
    blocks = open_blocks(out)
    assert len(blocks.index["shards"]) > 2
    # Count the general share again from the per-token source arrays of the shard files.
    src = blocks.all()["token_source"]
    groups = [blocks.index["groups"][s] for s in blocks.sources]
    general = sum(int((src == i).sum()) for i, g in enumerate(groups) if g == "general")
    share = general / int((src != NO_SOURCE).sum())
    manifest = json.loads((out / "manifest.json").read_text())
    assert share == pytest.approx(manifest["packing"]["general_share"])
    if strategy == "concat":  # no repetition: the small replay fixture cannot reach 20 %
        assert share < 0.2 and manifest["mix"]["warnings"]
    else:
        assert abs(share - 0.2) <= 0.01, share
    # The streamed build and the in-memory path (stats) make the same blocks.
    ref = prepare(c).packed
    got = blocks.all()
    assert (got["input_ids"] == ref.input_ids).all() and (got["answer_mask"] == ref.answer_mask).all()


# Builds CONFIG and SIGKILLs itself once the given number of shard files are on disk.
KILLER = """
import os, signal, sys
from medtune.data import shards
real, written = shards._save_npy, []
def save(path, array):
    real(path, array)
    written.append(path)
    if len(written) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
shards._save_npy = save
from medtune.config import load_config
from medtune.data.build import DataConfig, build_command
build_command(load_config(DataConfig, sys.argv[2], {}))
"""


def test_a_killed_build_keeps_the_old_output_and_the_next_build_starts_clean(tiny_llama, tmp_path):
    import yaml

    c = data_cfg(tiny_llama, tmp_path)
    out = build_command(c)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    cfg_path = tmp_path / "data.yaml"
    cfg_path.write_text(yaml.safe_dump(c.model_dump(exclude={"base_dir"})))
    killed = subprocess.run([sys.executable, "-c", KILLER, "4", str(cfg_path)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = list(out.parent.glob(".tmp-out-*"))
    assert len(leftovers) == 1 and len(list((leftovers[0] / "shards").glob("*.npy"))) == 4
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before, "the old build is untouched"
    build_command(c)
    assert not list(out.parent.glob(".tmp-out-*")), "the killed build's staging directory is removed"
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before, "the rebuild is identical"


def mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[5] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_blocks_read_for_a_step_do_not_stay_resident(tmp_path):
    from medtune.data.mapped import Mapped

    rng = np.random.default_rng(0)
    docs = [Doc("wiki", "general", rng.integers(3, 400, 5000).tolist(), f"w{i}") for i in range(100)]  # ~1 MB of ids
    blocks = write_docs(tmp_path / "s", docs, block=512, shard_tokens=1 << 20, drop_tail=True)
    ids_file = (tmp_path / "s" / "00000.ids.npy").resolve()
    control = Mapped(ids_file)
    assert int(control.array.sum()) > 0  # touches every page of the file through a map
    assert mapped_rss_kb(ids_file) > 500, "the check sees pages that stay mapped"
    control.release()
    every = blocks.rows(np.arange(len(blocks)))["input_ids"]
    assert every.shape[0] == len(blocks) and mapped_rss_kb(ids_file) == 0
