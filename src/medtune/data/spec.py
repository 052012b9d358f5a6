"""Typed description of one data source (a file, a directory, or a Hub dataset)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from medtune.config import StrictModel
from medtune.data.fields import QAFields


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
    """Adapter that reads the source; one of the names in medtune.data.registry.ADAPTERS."""
    name: str | None = None
    """Label used in reports, mixes and stats (defaults to the adapter name plus split)."""
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
        from medtune.data.registry import ADAPTERS  # the registry imports this module

        if name not in ADAPTERS:
            raise ValueError(f"unknown adapter {name!r} (valid: {', '.join(sorted(ADAPTERS))})")
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
        if self.name:
            return self.name
        return self.adapter + (f"_{self.split}" if self.split else "")
