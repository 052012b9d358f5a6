"""The data stage's config: which sources make the training set, and how they are guarded, mixed and packed.

Its own module because both halves of the stage read it: :mod:`medtune.data.reading` (every source
read and tokenized) and :mod:`medtune.data.build` (mixed, packed, written), which calls the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medtune.config import ConfigFile, RelativePath
from medtune.data.decontam import DecontamConfig
from medtune.data.registry import CHAT_ADAPTERS, QA_ADAPTERS, TEXT_ADAPTERS
from medtune.data.spec import Placed, SourceConfig, unique_names
from medtune.errors import ConfigError


class DataConfig(ConfigFile):
    """Which sources make the training set, what it is guarded against, and how it is mixed and packed."""

    data_root: RelativePath = "."
    """Directory that relative source paths resolve against (itself relative to the config file)."""
    train: list[SourceConfig] = Field(default_factory=list)
    """Medical QA sources turned into continued-pretraining documents."""
    replay: list[SourceConfig] = Field(default_factory=list)
    """General-domain text sources mixed in as replay."""
    eval: list[SourceConfig] = Field(default_factory=list)
    """Evaluation splits: the leakage guard keeps their items out of training."""
    general_share: float = Field(0.0, ge=0.0, le=1.0)
    """Target share of general (replay) tokens in the packed training blocks, in [0, 1]. 1 is the general-text
    control: as many general tokens as the domain text has, and no domain token (the same token budget)."""
    mix_strategy: Literal["fixed_share", "temperature", "concat"] = "fixed_share"
    """How replay is mixed in: fixed_share (up/down-sample general text to the share), temperature
    (also balance sources inside each group, p ~ n^(1/T)), or concat (no resampling or repetition)."""
    mix_temperature: float = Field(2.0, gt=0)
    """Temperature T for mix_strategy temperature (1: proportional to size, large: uniform)."""
    seed: int = 0
    """Seed for sampling and shuffling; the same seed gives the same blocks."""
    block_size: int = Field(512, ge=8)
    """Tokens per packed training block."""
    drop_tail: bool = False
    """Cut the last partial block (its token count is reported) instead of padding it."""
    template: str = "qa_text"
    """Training-document template (medtune.data.prompts.TRAIN_TEMPLATES)."""
    chat_template: str | None = None
    """A Jinja chat template for `chat` training sources, when the tokenizer has none (a base model's) or to
    use another one; by default the tokenizer's own."""
    drop_leaked: bool = False
    """Drop training items that also appear in an eval split, and training or replay documents that share an
    n-gram with one (decontamination), and report them, instead of refusing."""
    decontamination: DecontamConfig = Field(default_factory=DecontamConfig)
    """The n-gram check of every training and replay document against every `eval` split (13-gram, normalised
    text); what it finds is in manifest.json per source, with examples."""
    skip_invalid: bool = False
    """Write invalid source rows to a rejects file and go on, instead of stopping at the first."""
    shard_tokens: int = Field(1 << 23, ge=8)
    """Tokens per shard file of the packed build (rounded down to whole blocks); building holds about
    one shard in memory."""
    tokenizer: str = "smollm2-135m"
    """Model spec whose tokenizer counts and packs tokens (a local directory needs only its tokenizer files)."""
    out: str = "runs/data"
    """Output directory for `data build` (relative to the current directory)."""

    @field_validator("train", "eval")
    @classmethod
    def _qa_only(cls, sources: list[SourceConfig], info: Any) -> list[SourceConfig]:
        for i, src in enumerate(sources):
            if src.adapter in CHAT_ADAPTERS and info.field_name == "eval":
                raise ValueError(f"source {i}: adapter {src.adapter!r} reads conversations; use it under 'train' "
                                 f"(eval splits are QA items: {', '.join(sorted(QA_ADAPTERS))})")
            if src.adapter in TEXT_ADAPTERS:
                raise ValueError(f"source {i}: adapter {src.adapter!r} reads plain text; use it under 'replay' "
                                 f"(QA adapters: {', '.join(sorted(QA_ADAPTERS))})")
            if src.max_tokens is not None:
                raise ValueError(f"source {i}: max_tokens applies to replay sources; use limit for QA items")
        return sources

    @field_validator("replay")
    @classmethod
    def _text_only(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        for i, src in enumerate(sources):
            if src.adapter not in TEXT_ADAPTERS:
                raise ValueError(f"source {i}: adapter {src.adapter!r} is not a text adapter "
                                 f"(valid: {', '.join(sorted(TEXT_ADAPTERS))})")
        return sources

    @model_validator(mode="after")
    def _distinct_names(self) -> "DataConfig":
        try:
            self.source_names(strict=True)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self

    def _placed(self, role: Literal["train", "replay", "eval"]) -> list[Placed]:
        return [(f"{role} {i}", src) for i, src in enumerate(getattr(self, role))]

    def source_names(self, *, strict: bool = False) -> SourceNames:
        """Each source's distinct name (:func:`medtune.data.spec.unique_names`). Training and replay
        sources share one set of names (they are mixed and packed together); eval sources have their
        own, so a held-out fold and the training rest of one file may both keep the adapter's name."""
        mixed = unique_names(self._placed("train") + self._placed("replay"), strict=strict)
        return SourceNames(train=mixed[: len(self.train)], replay=mixed[len(self.train):],
                           eval=unique_names(self._placed("eval"), strict=strict))

    def root(self) -> Path:
        """``data_root`` by the one relative-path rule."""
        return self.resolve(self.data_root)


@dataclass(frozen=True)
class SourceNames:
    """The names the sources of a :class:`DataConfig` go by, in config order, per role."""

    train: list[str]
    replay: list[str]
    eval: list[str]
