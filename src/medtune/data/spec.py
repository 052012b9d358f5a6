"""Typed description of one data source (a file, a directory, or a Hub dataset)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medtune.config import StrictModel
from medtune.data.fields import QAFields
from medtune.errors import ConfigError

ADAPTER_NAMES = frozenset({
    "pubmedqa", "pubmedqa_hub", "medmcqa", "medmcqa_hub", "medqa", "medqa_hub", "arc", "arc_hub", "mmlu",
    "qa", "qa_hub", "chat", "text", "text_hub",
})
"""The adapters a source may name. :data:`medtune.data.registry.ADAPTERS` maps each to its reader and
checks that it maps exactly these; the names are listed here, not read from the registry, because every
adapter reads a :class:`SourceConfig`, so this module sits below the adapters and the registry."""


class FoldConfig(StrictModel):
    """A deterministic held-out fold of a source, for validation splits that no test item enters.

    Items are ranked by sha256(salt + id) inside each stratum; the first round(share x n) of each
    stratum are the held-out fold. The same salt and share always give the same fold, whatever the
    file order, and ``take: rest`` is exactly the complement of ``take: held_out``."""

    share: float = Field(gt=0, lt=1)
    """Share of the items (per stratum) in the held-out fold."""
    take: Literal["held_out", "rest"]
    """held_out: only the fold (validation / evaluation); rest: every other item (training)."""
    stratify: Literal["subject", "answer"] | None = None
    """Split each subject (MedMCQA, MMLU) or each answer label separately, keeping their proportions."""
    salt: str = "medtune-fold"
    """Changes which items fall in the fold."""


class SourceConfig(StrictModel):
    """One data source: which adapter reads it, and where it is."""

    adapter: str
    """Adapter that reads the source; one of ADAPTER_NAMES (medtune.data.registry.ADAPTERS: their readers)."""
    name: str | None = None
    """Label used in reports, mixes and stats (defaults to the adapter name plus split; unnamed sources
    that would share that default are told apart by their file or Hub id, see unique_names)."""
    path: str | None = None
    """Local file (or directory, for MMLU CSVs) in the source's official format. Relative paths
    resolve against the config's data_root."""
    hub: str | None = None
    """Hugging Face Hub dataset id (e.g. qiaojin/PubMedQA) or a local directory in the same layout."""
    hub_config: str | None = None
    """Hub dataset configuration name (e.g. pqa_labeled)."""
    split: str | None = None
    """Split to read. Hub: the dataset split (train/validation/test). Official PubMedQA
    ori_pqal.json: all, test (the official 500 test PMIDs) or trainval (the rest)."""
    text_field: str = "text"
    """Field holding the text, for JSON-lines, Parquet and Hub text sources."""
    glob: str = "**/*"
    """Text sources whose path is a directory: the files read (recursive by default), in sorted order; of
    those, the .txt, .md, .jsonl and .parquet files."""
    separator: str | None = None
    """Text sources: the string between documents inside one text (e.g. "\\n\\n" for paragraphs), each part
    one document. Unset: a .txt file holds one document per line (WikiText's layout), a .md file is one
    document, a JSON-lines / Parquet / Hub row is one document."""
    subjects: list[str] | None = None
    """MMLU / MedMCQA: keep only these subjects."""
    exclude_subjects: list[str] | Literal["medical"] | None = None
    """MMLU: drop these subjects; 'medical' drops the medical subjects for a general score."""
    fold: FoldConfig | None = None
    """Keep only a deterministic held-out fold of the source, or only the rest (see FoldConfig)."""
    limit: int | None = Field(None, ge=1)
    """Keep only the first N records (after filtering and folding), for quick runs. On a streamed
    replay source this is the document cap: reading stops after N documents."""
    max_tokens: int | None = Field(None, ge=1)
    """Replay sources: read only the first N tokens (the last document is cut to fit), so a source can
    be "the first 100M tokens of allenai/c4 en"; reading, and a streamed download, stop there."""
    streaming: bool = False
    """Hub sources: stream the dataset (datasets streaming) row by row instead of downloading and
    loading it whole; with max_tokens or limit only the rows read are fetched."""
    fields: QAFields | None = None
    """Adapters qa / qa_hub: which column or key holds the question, the options, the answer (and how it is
    written), and optionally a context, explanation, id and subject (see medtune.data.fields.QAFields)."""

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, name: str) -> str:
        if name not in ADAPTER_NAMES:
            raise ValueError(f"unknown adapter {name!r} (valid: {', '.join(sorted(ADAPTER_NAMES))})")
        return name

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (local official files) or 'hub' (Hub dataset id)")
        return self

    @model_validator(mode="after")
    def _streaming_needs_hub(self) -> "SourceConfig":
        if self.streaming and self.hub is None:
            raise ValueError("streaming applies to Hub sources ('hub'); local text and JSON-lines files are "
                             "always read lazily")
        return self

    @model_validator(mode="after")
    def _text_options(self) -> "SourceConfig":
        if self.glob != "**/*" and self.adapter != "text":
            raise ValueError("glob selects files in a directory of a 'text' source only")
        if self.separator is not None and (self.adapter not in ("text", "text_hub") or not self.separator):
            raise ValueError("separator: a non-empty string, for 'text' and 'text_hub' sources only")
        return self

    @model_validator(mode="after")
    def _fields_for_qa(self) -> "SourceConfig":
        if (self.fields is not None) != (self.adapter in ("qa", "qa_hub")):
            raise ValueError("'fields' (a column mapping) is given for adapters qa and qa_hub, and only for them")
        return self

    @property
    def label(self) -> str:
        """``name``, else the default name: the adapter plus split. Unnamed sources may share it; the
        name a source has among others is :func:`unique_names`'."""
        if self.name:
            return self.name
        return self.adapter + (f"_{self.split}" if self.split else "")

    @property
    def location(self) -> str:
        """Where the source is, as written: its path, or ``hub:`` and its Hub id."""
        return self.path if self.path is not None else f"hub:{self.hub}"


Placed = tuple[str, SourceConfig]
"""A source and where it is in its config, e.g. ``("train 1", src)``: what an error names."""


def _parts(src: SourceConfig) -> list[str]:
    """The source's location as name parts, outermost first: folders and file stem, or Hub id and config."""
    if src.path is not None:
        path = PurePath(src.path)
        parts = [p for p in path.parts if p not in (path.anchor, "..", "~")]
        if parts:
            parts[-1] = PurePath(parts[-1]).stem or parts[-1]
    else:
        parts = str(src.hub).split("/") + ([src.hub_config] if src.hub_config else [])
    return [p for p in parts if p] or ["source"]


def _tail(parts: list[str], k: int) -> str:
    return "_".join(parts[-k:])


def _derived(label: str, sources: Sequence[SourceConfig]) -> list[str]:
    """Names for unnamed sources sharing the default ``label``: the label plus the shortest end of each
    location (file stem, then the folders above it) that no source elsewhere shares; sources at the
    same location (read with different settings) are numbered in order (``_1``, ``_2``)."""
    parts = [_parts(s) for s in sources]
    out = []
    for j, p in enumerate(parts):
        k = next((k for k in range(1, len(p)) if all(q == p for q in parts if _tail(q, k) == _tail(p, k))), len(p))
        same = [i for i, q in enumerate(parts) if q == p]
        out.append(f"{label}_{_tail(p, k)}" + (f"_{same.index(j) + 1}" if len(same) > 1 else ""))
    return out


def _clash(name: str, first: Placed, second: Placed, how: str) -> ConfigError:
    return ConfigError(f"source name {name!r} is given to {first[0]} ({first[1].location}) and {how} "
                       f"{second[0]} ({second[1].location}); give each source its own 'name'")


def unique_names(placed: Sequence[Placed], *, strict: bool = False) -> list[str]:
    """Each source's distinct name, in order: what reports, mixes, packed blocks and the leakage guard
    key it by (a repeated name would merge or overwrite two sources).

    A ``name`` given twice is refused, naming both sources. An unnamed source keeps its default name
    (:attr:`SourceConfig.label`) unless another source has it too; then it is named after its location
    (:func:`_derived`). ``strict`` (config validation) also refuses a ``name`` equal to an unnamed
    source's default or derived name, which is likely a mistake; without it that source is renamed, so
    sources added to a validated config (the study's eval splits) never fail on their names.
    """
    given: dict[str, Placed] = {}
    for where, src in placed:
        if src.name:
            if src.name in given:
                raise _clash(src.name, given[src.name], (where, src), "to")
            given[src.name] = (where, src)
    unnamed: dict[str, list[int]] = {}
    for i, (_, src) in enumerate(placed):
        if not src.name:
            unnamed.setdefault(src.label, []).append(i)
    if strict:
        for label, members in unnamed.items():
            if label in given:
                raise _clash(label, given[label], placed[members[0]], "is the default name (adapter plus split) of")
    names = [src.name or "" for _, src in placed]
    keep = {label: m[0] for label, m in unnamed.items() if len(m) == 1 and label not in given}
    taken = set(given) | set(keep)
    for i in keep.values():
        names[i] = placed[i][1].label
    for label, members in unnamed.items():
        if label in keep:
            continue
        for i, name in zip(members, _derived(label, [placed[i][1] for i in members])):
            if strict and name in given:
                raise _clash(name, given[name], placed[i], "is the name derived from the location of")
            n, free = 2, name
            while free in taken:  # the derived name is some other source's name
                free, n = f"{name}_{n}", n + 1
            names[i] = free
            taken.add(free)
    return names
