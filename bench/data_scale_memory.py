#!/usr/bin/env python
"""Peak RSS of the data build without the tokenizer: a synthetic replay token cache -> mix plan -> shards.

Isolates the part of ``bench/data_scale.py``'s memory that is medtune's own (numpy only; no torch,
no transformers): random token ids in documents of 1-259 tokens are appended to a token cache of
N tokens, mixed with 500 domain documents of 390 tokens (``fixed_share``, replay budget N) and
written to 512-token shards. Prints the process's peak RSS after each stage.

    .venv/bin/python bench/data_scale_memory.py 1e8      # about 10 s, 600 MB of /tmp

Not a test.
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medtune.data.mixing import mix_plan
from medtune.data.shards import ShardWriter, write_plan
from medtune.data.tokens import CacheWriter


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="medtune-data-memory-"))
    rng = np.random.default_rng(0)
    print(f"start: peak RSS {rss_mb()} MB")
    writer = CacheWriter(root / "cache.ids", np.dtype(np.uint16), n)
    while not writer.full:
        lengths = rng.integers(1, 260, 8000)
        writer.add(rng.integers(0, 49_000, int(lengths.sum())), lengths)
    cache = writer.close()
    print(f"token cache ({len(cache.lengths):,} documents): peak RSS {rss_mb()} MB")
    domain = [rng.integers(0, 49_000, 390).tolist() for _ in range(500)]
    plan = mix_plan({"d": np.full(500, 390), "g": cache.lengths}, {"d": "domain", "g": "general"},
                    (n - 0.25) / (n - 0.25 + 195_000), "fixed_share", 0)
    print(f"mix plan ({len(plan.doc):,} entries): peak RSS {rss_mb()} MB")
    reader = cache.reader()
    shards = ShardWriter(root / "shards", block_size=512, vocab_size=49_152, sources=["d", "g"],
                         groups={"d": "domain", "g": "general"}, eos_id=0, pad_id=0, drop_tail=False,
                         shard_tokens=1 << 23)
    started = time.perf_counter()
    counts = write_plan(shards, plan, lambda s, d, k: np.asarray(domain[d][:k]) if s == 0 else reader.read(d, k),
                        {0: np.zeros(500, np.int64)})
    print(f"shards ({counts.blocks:,} blocks, {time.perf_counter() - started:.1f} s): peak RSS {rss_mb()} MB")
    shutil.rmtree(root)


if __name__ == "__main__":
    main(int(float(sys.argv[1]) if len(sys.argv) > 1 else 1e8))
