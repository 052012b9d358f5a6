"""The data stage: sources -> leakage guard -> training texts -> tokens -> replay mix -> packed blocks.

``prepare(cfg)`` does the work in memory and returns every count; ``build_command`` writes the
packed blocks and their provenance; ``stats_command`` prints the counts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from medtune.config import StrictModel
from medtune.data.leakage import GuardReport, guard
from medtune.data.mixing import Doc, MixResult, mix
from medtune.data.packing import PackResult, pack
from medtune.data.prompts import get_train_template, training_text
from medtune.data.records import QARecord, TextDoc
from medtune.data.registry import QA_ADAPTERS, TEXT_ADAPTERS, load_source
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig


class DataConfig(StrictModel):
    """Which sources make the training set, what it is guarded against, and how it is mixed and packed."""

    data_root: str = "."
    """Directory that relative source paths resolve against (itself relative to the config file)."""
    train: list[SourceConfig] = Field(default_factory=list)
    """Medical QA sources turned into continued-pretraining documents."""
    replay: list[SourceConfig] = Field(default_factory=list)
    """General-domain text sources mixed in as replay."""
    eval: list[SourceConfig] = Field(default_factory=list)
    """Evaluation splits: the leakage guard keeps their items out of training."""
    general_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Target share of general (replay) tokens in the packed training blocks, in [0, 1)."""
    mix_strategy: Literal["fixed_share", "temperature", "concat"] = "fixed_share"
    """How replay is mixed in: fixed_share (up/down-sample general text to the share), temperature
    (also balance sources inside each group, p ~ n^(1/T)), or concat (no resampling or repetition)."""
    temperature: float = Field(2.0, gt=0)
    """Temperature T for mix_strategy temperature (1: proportional to size, large: uniform)."""
    seed: int = 0
    """Seed for sampling and shuffling; the same seed gives the same blocks."""
    block_size: int = Field(512, ge=8)
    """Tokens per packed training block."""
    drop_tail: bool = False
    """Cut the last partial block (its token count is reported) instead of padding it."""
    template: str = "qa_text"
    """Training-document template (medtune.data.prompts.TRAIN_TEMPLATES)."""
    drop_leaked: bool = False
    """Drop training items that also appear in an eval split (and report them) instead of refusing."""
    skip_invalid: bool = False
    """Write invalid source rows to a rejects file and go on, instead of stopping at the first."""
    tokenizer: str = "smollm2-135m"
    """Model spec whose tokenizer counts and packs tokens."""
    out: str = "runs/data"
    """Output directory for `data build` (relative to the current directory)."""
    base_dir: str | None = Field(None, json_schema_extra={"cli": False})
    """Directory of the config file (set automatically); data_root is relative to it."""

    @field_validator("train", "eval")
    @classmethod
    def _qa_only(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        for i, src in enumerate(sources):
            if src.adapter in TEXT_ADAPTERS:
                raise ValueError(f"source {i}: adapter {src.adapter!r} reads plain text; use it under 'replay' "
                                 f"(QA adapters: {', '.join(sorted(QA_ADAPTERS))})")
        return sources

    @field_validator("replay")
    @classmethod
    def _text_only(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        for i, src in enumerate(sources):
            if src.adapter not in TEXT_ADAPTERS:
                raise ValueError(f"source {i}: adapter {src.adapter!r} is not a text adapter "
                                 f"(valid: {', '.join(sorted(TEXT_ADAPTERS))})")
        return sources

    def root(self) -> Path:
        return (Path(self.base_dir or ".") / self.data_root).resolve()


@dataclass
class SourceStats:
    role: Literal["train", "replay", "eval"]
    name: str
    adapter: str
    location: str
    items: int
    tokens: int
    labels: dict[str, int] = field(default_factory=dict)
    sha256: str | None = None


@dataclass
class Prepared:
    """Everything the data stage computed, before anything is written."""

    sources: list[SourceStats]
    guard: GuardReport
    mix: MixResult | None
    packed: PackResult | None
    rejects: Rejects
    eos_id: int


def label_counts(records: Sequence[QARecord]) -> dict[str, int]:
    """Answer distribution: the answer words for PubMedQA, the option letters otherwise."""
    counts: Counter[str] = Counter()
    order: dict[str, int] = {}
    for r in records:
        names = r.options if r.dataset == "pubmedqa" else (r.option_labels or tuple("ABCDEFGHIJ"[: len(r.options)]))
        counts[names[r.answer]] += 1
        for i, n in enumerate(names):
            order.setdefault(n, i)
    return {k: counts[k] for k in sorted(counts, key=lambda k: (order[k], k))}


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _location(src: SourceConfig, root: Path) -> Path | None:
    if src.path is None:
        return None
    p = Path(src.path)
    return p if p.is_absolute() else root / p


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def prepare(cfg: DataConfig, tokenizer: Any | None = None, *, mix_and_pack: bool = True) -> Prepared:
    """Load, guard, tokenize, mix and pack, returning every count. Nothing is written."""
    from medtune import models

    root = cfg.root()
    rejects = Rejects(skip_invalid=cfg.skip_invalid)
    tokenizer = tokenizer or models.load_tokenizer(cfg.tokenizer)
    template = get_train_template(cfg.template)
    stats: list[SourceStats] = []

    def describe(role: str, src: SourceConfig, records: Sequence[QARecord | TextDoc], tokens: int) -> None:
        path = _location(src, root)
        qa = [r for r in records if isinstance(r, QARecord)]
        stats.append(SourceStats(role, src.label, src.adapter, str(path) if path else f"hub:{src.hub}", len(records),
                                 tokens, label_counts(qa), _sha256(path) if path else None))

    eval_sets: dict[str, list[QARecord]] = {}
    for src in cfg.eval:
        recs = load_source(src, root, rejects)
        eval_sets[src.label] = recs
        # Tokens of the zero-shot evaluation prompt: what scoring the split costs.
        from medtune.data.prompts import eval_prompt

        describe("eval", src, recs, sum(map(len, _tokenize(tokenizer, [eval_prompt(r).context for r in recs]))))

    train_by_source: dict[str, list[QARecord]] = {src.label: load_source(src, root, rejects) for src in cfg.train}
    all_train = [r for recs in train_by_source.values() for r in recs]
    report = guard(all_train, eval_sets, drop=cfg.drop_leaked)
    kept_ids = {id(r) for r in report.kept}

    docs: dict[str, list[Doc]] = {}
    groups: dict[str, str] = {}
    for src in cfg.train:
        recs = [r for r in train_by_source[src.label] if id(r) in kept_ids]
        texts = [training_text(r, template) for r in recs]
        # Prompt and answer are tokenized apart (the answer starts with a space, a natural token
        # boundary) so answer-only loss knows where the answer begins.
        prompts = _tokenize(tokenizer, [t.prompt for t in texts])
        answers = _tokenize(tokenizer, [t.answer for t in texts])
        docs[src.label] = [Doc(src.label, "domain", p + a, r.id, answer_start=len(p))
                           for r, p, a in zip(recs, prompts, answers)]
        groups[src.label] = "domain"
        describe("train", src, recs, sum(len(d.tokens) for d in docs[src.label]))
    for src in cfg.replay:
        texts = load_source(src, root, rejects)
        toks = _tokenize(tokenizer, [d.text for d in texts])
        docs[src.label] = [Doc(src.label, "general", t, d.id) for d, t in zip(texts, toks)]
        groups[src.label] = "general"
        describe("replay", src, texts, sum(map(len, toks)))

    mixed = packed = None
    if mix_and_pack and any(docs[s] for s, g in groups.items() if g == "domain"):
        mixed = mix(docs, groups, cfg.general_share, cfg.mix_strategy, cfg.seed, cfg.temperature)
        packed = pack(mixed.docs, cfg.block_size, tokenizer.eos_token_id, drop_tail=cfg.drop_tail,
                      pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    return Prepared(stats, report, mixed, packed, rejects, tokenizer.eos_token_id)


def answer_mask(docs: Sequence[Doc], packed: PackResult) -> Any:
    """(n_blocks, block_size) uint8: 1 on the tokens answer-only loss trains on (each document's
    answer and its EOS; every token of general text), 0 elsewhere and on padding."""
    import numpy as np

    parts = []
    for d in docs:
        start = min(d.answer_start, len(d.tokens))
        parts.append(np.concatenate([np.zeros(start, np.uint8), np.ones(len(d.tokens) - start + 1, np.uint8)]))
    stream = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    n, width = packed.input_ids.shape
    out = np.zeros(n * width, np.uint8)
    keep = min(len(stream), n * width)
    out[:keep] = stream[:keep]
    return out.reshape(n, width) & (packed.attention_mask == 1)


def _fmt_labels(labels: dict[str, int]) -> str:
    return " / ".join(f"{k} {v}" for k, v in labels.items())


def summary(cfg: DataConfig, prep: Prepared) -> dict[str, Any]:
    """JSON-ready record of what the data stage read, dropped, mixed and packed."""
    from dataclasses import asdict

    return {
        "sources": [asdict(s) for s in prep.sources],
        "rejected_rows": len(prep.rejects),
        "leakage": {"dropped_items": prep.guard.n_dropped, "per_eval_set": prep.guard.counts,
                    "examples": [asdict(l) for l in prep.guard.dropped[:20]]},
        "mix": asdict(prep.mix.report) if prep.mix else None,
        "packing": prep.packed.summary() if prep.packed else None,
    }


def stats_command(cfg: DataConfig) -> dict[str, Any]:
    """Print per-source item and token counts, answer labels, leakage and the realised mix."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with console.status("reading and tokenizing sources ..."):
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
    if len(prep.rejects):
        path = Path(cfg.out) / "rejects.jsonl"
        prep.rejects.write(path)
        console.print(f"[bold yellow]Rejected rows[/]: {len(prep.rejects)} (written to {path})")
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
    return summary(cfg, prep)


def build_command(cfg: DataConfig) -> Path:
    """Write the packed blocks (safetensors) with their manifest, config, templates and rejects."""
    import json

    from rich.console import Console
    from safetensors.numpy import save_file

    from medtune import atomic
    from medtune.config import dump_config
    from medtune.data.prompts import template_provenance

    console = Console()
    with console.status("reading, tokenizing, mixing and packing ..."):
        prep = prepare(cfg)
    if prep.packed is None:
        from medtune.errors import ConfigError

        raise ConfigError("data build: no training items left (add 'train' sources, or check the leakage guard)")
    out = Path(cfg.out)
    with atomic.staging_dir(out) as tmp:
        p = prep.packed
        save_file({"input_ids": p.input_ids, "attention_mask": p.attention_mask, "token_source": p.token_source,
                   "answer_mask": answer_mask(prep.mix.docs, p)},
                  str(tmp / "blocks.safetensors"), metadata={"sources": json.dumps(p.sources)})
        atomic.write_json(tmp / "manifest.json", {**summary(cfg, prep), **_provenance()})
        atomic.write_text(tmp / "config.yaml", dump_config(cfg))
        atomic.write_json(tmp / "templates.json", template_provenance(get_train_template(cfg.template)))
        prep.rejects.write(tmp / "rejects.jsonl")
    console.print(f"wrote {p.input_ids.shape[0]:,} blocks of {p.block_size} tokens to {out} "
                  f"(general share {p.realised_share('general'):.1%}; rejected rows: {len(prep.rejects)})")
    return out


def _provenance() -> dict[str, Any]:
    import platform
    import time
    from importlib.metadata import version

    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "packages": {p: version(p) for p in ("medtune", "transformers", "tokenizers", "torch")}}
