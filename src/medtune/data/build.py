"""The data stage: sources -> leakage guard -> training texts -> tokens -> replay mix -> packed blocks.

Both entry points share one reading stage (:func:`load`): QA sources are read and tokenized in
memory (they are small), replay sources are streamed document by document, tokenized in parallel
batches and written to per-source token caches on disk, so a billion replay tokens never sit in
memory. The mix is planned from per-source document lengths (:func:`medtune.data.mixing.mix_plan`).

``build_command`` applies the plan straight into memory-mapped shards (:mod:`medtune.data.shards`),
one shard buffer at a time; ``prepare(cfg)`` applies the same plan in memory and returns every count
(``stats_command``, and tests, on small data).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from medtune.data.config import DataConfig
from medtune.data.decontam import DecontamReport
from medtune.data.leakage import GuardReport
from medtune.data.mixing import Doc, MixPlan, MixReport, MixResult, mix, mix_plan
from medtune.data.packing import PackResult, group_share, pack
from medtune.data.prompts import get_train_template
from medtune.data.reading import Loaded, SourceStats, load
from medtune.data.rejects import Rejects
from medtune.data.shards import Blocks, ShardWriter, write_plan
from medtune.data.tokens import TokenCache, bos_id
from medtune.errors import ConfigError

SHARDS = "shards"
"""Sub-directory of a build holding the packed shards (layout: medtune.data.shards)."""


@dataclass
class Prepared:
    """Everything the data stage computed, before anything is written."""

    sources: list[SourceStats]
    guard: GuardReport
    mix: MixResult | None
    packed: PackResult | None
    rejects: Rejects
    eos_id: int
    decontam: DecontamReport | None = None


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _cached_docs(name: str, cache: TokenCache) -> list[Doc]:
    reader = cache.reader()
    ids = reader.all()
    reader.close()
    return [Doc(name, "general", ids[a:b].tolist(), f"{name}:{i}") for i, (a, b) in enumerate(zip(cache.offsets[:-1], cache.offsets[1:]))]


def prepare(cfg: DataConfig, tokenizer: Any | None = None, *, mix_and_pack: bool = True) -> Prepared:
    """Load, guard, tokenize, mix and pack in memory, returning every count. Nothing is kept on disk."""
    from medtune import models

    tokenizer = tokenizer or models.load_tokenizer(cfg.tokenizer)
    with tempfile.TemporaryDirectory(prefix="medtune-data-") as tmp:
        loaded = load(cfg, tokenizer, Path(tmp))
        docs = loaded.domain | {s: _cached_docs(s, c) for s, c in loaded.general.items()}
    mixed = packed = None
    if mix_and_pack and any(loaded.domain.values()):
        mixed = mix(docs, loaded.groups(), cfg.general_share, cfg.mix_strategy, cfg.seed, cfg.mix_temperature)
        packed = pack(mixed.docs, cfg.block_size, tokenizer.eos_token_id, drop_tail=cfg.drop_tail, pad_id=_pad_id(tokenizer),
                      bos_id=bos_id(tokenizer))
    return Prepared(loaded.sources, loaded.guard, mixed, packed, loaded.rejects, tokenizer.eos_token_id, loaded.decontam)


def _fmt_labels(labels: dict[str, int]) -> str:
    return " / ".join(f"{k} {v}" for k, v in labels.items())


def summary(sources: list[SourceStats], rejects: Rejects, report: GuardReport, mix: MixReport | None,
            packing: dict[str, Any] | None, decontam: DecontamReport | None = None) -> dict[str, Any]:
    """JSON-ready record of what the data stage read, dropped, mixed and packed."""
    from dataclasses import asdict

    return {
        "sources": [asdict(s) for s in sources],
        "rejected_rows": len(rejects),
        "leakage": {"dropped_items": report.n_dropped, "per_eval_set": report.counts,
                    "examples": [asdict(l) for l in report.dropped[:20]]},
        "decontamination": asdict(decontam) if decontam else None,
        "mix": asdict(mix) if mix else None,
        "packing": packing,
    }


def stats_command(cfg: DataConfig) -> dict[str, Any]:
    """Print per-source item and token counts, answer labels, leakage and the realised mix."""
    from rich.console import Console
    from rich.table import Table

    from medtune.errors import DataError

    console = Console()
    console.print("reading and tokenizing sources ...")
    prep = prepare(cfg)
    table = Table(title="Sources", title_justify="left")
    for col in ("role", "source", "adapter", "items", "tokens", "answers"):
        table.add_column(col, justify="right" if col in ("items", "tokens") else "left")
    for s in prep.sources:
        table.add_row(s.role, s.name, s.adapter, f"{s.items:,}", f"{s.tokens:,}", _fmt_labels(s.labels))
    console.print(table)
    g = prep.guard
    if cfg.eval:
        per = ", ".join(f"{k}: {v}" for k, v in g.counts.items())
        console.print(f"[bold]Leakage guard[/]: {g.n_dropped} training item(s) also in an eval split, dropped ({per})")
    if len(prep.rejects):  # printed, not written: a stats command leaves no files behind
        console.print(f"[bold yellow]Rejected rows[/]: {len(prep.rejects)} (`data build` writes them all to "
                      f"{Path(cfg.out) / 'rejects.jsonl'})")
        for r in prep.rejects.rows[:20]:
            console.print(f"  {DataError(r['file'], r['location'], r['field'], r['error'])}", markup=False,
                          highlight=False, soft_wrap=True)
        if len(prep.rejects) > 20:
            console.print(f"  ... and {len(prep.rejects) - 20} more")
    if prep.mix and prep.packed:
        r, p = prep.mix.report, prep.packed
        mt = Table(title=f"Realised mix ({r.strategy}, seed {r.seed})", title_justify="left")
        for col in ("source", "group", "available tokens", "mixed tokens", "x available", "tokens in blocks", "share"):
            mt.add_column(col, justify="left" if col in ("source", "group") else "right")
        total = sum(p.source_tokens.values()) or 1
        for name, avail in r.available_tokens.items():
            mt.add_row(name, p.groups.get(name, "-"), f"{avail:,}", f"{r.tokens[name]:,}", f"{r.epochs[name]:.2f}",
                       f"{p.source_tokens.get(name, 0):,}", f"{p.source_tokens.get(name, 0) / total:.1%}")
        console.print(mt)
        console.print(f"general share: target {r.general_share_target:.1%}, realised on packed blocks "
                      f"{p.realised_share('general'):.1%}")
        tail = (f"last partial block cut: {p.tail_dropped_tokens} tokens" if cfg.drop_tail
                else f"last block padded with {p.pad_tokens} pad tokens (masked)")
        console.print(f"packed: {p.input_ids.shape[0]:,} blocks of {p.block_size} tokens; {tail}")
        for w in r.warnings:
            console.print(f"[yellow]warning[/]: {w}")
    if prep.decontam is not None:
        for name, f in prep.decontam.sources.items():
            if f.contaminated:
                console.print(f"[bold]Decontamination[/]: {name}: {f.contaminated} of {f.checked} documents share a "
                              f"{prep.decontam.ngram}-gram with an eval split, dropped "
                              f"({', '.join(f'{k}: {v}' for k, v in f.per_eval_set.items())})")
    return summary(prep.sources, prep.rejects, prep.guard, prep.mix.report if prep.mix else None,
                   prep.packed.summary() if prep.packed else None, prep.decontam)


def _write_shards(cfg: DataConfig, tokenizer: Any, loaded: Loaded, plan: MixPlan, root: Path) -> dict[str, Any]:
    """Apply the mix plan straight into shards; returns the packing summary measured on what was written."""
    names = plan.sources
    domain = {i: loaded.domain[s] for i, s in enumerate(names) if s in loaded.domain}
    readers = {i: loaded.general[s].reader() for i, s in enumerate(names) if s in loaded.general}

    def tokens(s: int, d: int, n: int) -> np.ndarray:
        return np.asarray(domain[s][d].tokens[:n], dtype=np.int64) if s in domain else readers[s].read(d, n)

    groups = loaded.groups()
    writer = ShardWriter(root, block_size=cfg.block_size, vocab_size=len(tokenizer), sources=names, groups=groups,
                         eos_id=tokenizer.eos_token_id, pad_id=_pad_id(tokenizer), drop_tail=cfg.drop_tail,
                         shard_tokens=cfg.shard_tokens, bos_id=bos_id(tokenizer))
    starts = {i: np.fromiter((d.answer_start for d in docs), np.int64, len(docs)) for i, docs in domain.items()}
    counts = write_plan(writer, plan, tokens, starts)
    for r in readers.values():
        r.close()
    return {"blocks": counts.blocks, "block_size": cfg.block_size, "source_tokens": counts.source_tokens,
            "eos_tokens": counts.eos_tokens, "pad_tokens": counts.pad_tokens,
            "tail_dropped_tokens": counts.tail_dropped_tokens,
            "general_share": group_share(counts.source_tokens, groups, "general"),
            "shards": counts.shards, "ids_dtype": writer.ids_dtype.name}


def build_command(cfg: DataConfig) -> Path:
    """Write the packed blocks as memory-mapped shards, with their manifest, config, templates and rejects.

    Everything is written into a staging directory renamed into place at the end, so a killed build
    leaves the previous output as it was; its leftovers are removed by the next build of ``out``
    (:func:`medtune.outdir.staging_dir` does both).
    """
    from rich.console import Console

    from medtune import atomic, models, outdir
    from medtune.config import dump_config
    from medtune.data.manifest import DataManifest
    from medtune.data.prompts import template_provenance

    console = Console(stderr=True)
    outdir.check(cfg.out, "data")  # before the work: refuse an --out medtune may not replace
    tokenizer = models.load_tokenizer(cfg.tokenizer)
    out = Path(cfg.out)
    with outdir.staging_dir(out, "data") as tmp:
        loaded = load(cfg, tokenizer, tmp / "cache")
        if not any(loaded.domain.values()):
            raise ConfigError("data build: no training items left (add 'train' sources, or check the leakage guard)")
        console.print("mixing and packing ...")
        plan = mix_plan(loaded.lengths(), loaded.groups(), cfg.general_share, cfg.mix_strategy, cfg.seed, cfg.mix_temperature)
        for w in plan.report.warnings:
            console.print(f"[yellow]warning[/]: {w}")
        packing = _write_shards(cfg, tokenizer, loaded, plan, tmp / SHARDS)
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        DataManifest.model_validate({**summary(loaded.sources, loaded.rejects, loaded.guard, plan.report, packing,
                                               loaded.decontam), **_provenance()}).save(tmp / "manifest.json")
        atomic.write_text(tmp / "config.yaml", dump_config(cfg))
        atomic.write_json(tmp / "templates.json", template_provenance(get_train_template(cfg.template)))
        loaded.rejects.write(tmp / "rejects.jsonl")
    console.print(f"wrote {packing['blocks']:,} blocks of {cfg.block_size} tokens in {packing['shards']} shard(s) to {out} "
                  f"(general share {packing['general_share']:.1%}; rejected rows: {len(loaded.rejects)})")
    return out


def open_blocks(out: str | Path) -> Blocks:
    """The packed blocks of the build in ``out``, memory-mapped."""
    return Blocks(Path(out) / SHARDS)


def _provenance() -> dict[str, Any]:
    import platform
    import time
    from importlib.metadata import version

    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "packages": {p: version(p) for p in ("medtune", "transformers", "tokenizers", "torch")}}
