"""The study file: one YAML that describes the whole medical-adaptation study.

Everything below is validated once, when the file is read: each variant's training settings are
built into a full :class:`~medtune.train.config.TrainConfig` here, so a bad learning rate in the
third variant is reported as ``variants.2.train.learning_rate`` before anything runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from medtune.config import ConfigFile, ModelConfig, Names, StrictModel, format_validation_error
from medtune.data.config import DataConfig
from medtune.data.spec import SourceConfig
from medtune.evaluate.settings import TaskSettings
from medtune.evaluate.tasks import TASKS, expand
from medtune.merge.sweep import SweepSettings
from medtune.placement import Placed

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_STUDY_OWNED = ("model", "data", "out", "resume", "progress", "base_dir")
"""TrainConfig fields the study sets itself (a variant's ``train`` may not)."""


class VariantConfig(StrictModel):
    """One trained model of the study: the shared training settings plus this variant's changes."""

    name: str
    """Directory-safe name (lower case, digits, '_', '-', '.'), e.g. lora_replay20."""
    general_share: float | None = Field(None, ge=0.0, le=1.0)
    """Share of general replay tokens for this variant (default: data.general_share); 1 makes it the control."""
    control: bool = False
    """The general-text control: the same recipe and token budget trained on the replay text alone (general_share
    1, derived). The report then gives every model's change vs the control next to its change vs the base, so it
    says which part of an effect needs the medical data. Not swept and never shipped unless named."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Training settings that differ from the study's `train` (e.g. {method: full, learning_rate: 2e-5})."""

    @model_validator(mode="after")
    def _control_share(self) -> "VariantConfig":
        if self.control and self.general_share not in (None, 1.0):
            raise ValueError(f"general_share: {self.general_share} contradicts control: true (a control trains on "
                             "general text only, general_share 1); leave general_share out")
        return self

    @property
    def is_control(self) -> bool:
        """Trains on general text only (control: true, or general_share 1)."""
        return self.control or self.general_share == 1.0

    @property
    def share(self) -> float | None:
        """The variant's general share (1 for a control), None for the study's."""
        return 1.0 if self.control else self.general_share

    @field_validator("name")
    @classmethod
    def _dir_safe(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"invalid variant name {value!r}: use lower case letters, digits, '_', '-', '.'")
        return value


class StudyEvalConfig(TaskSettings):
    """Which tasks report the study's numbers (test splits) and which select among models (validation); the task
    settings are `medtune eval`'s (TaskSettings), data_root relative to the study file."""

    test_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task, the reported split when it is not the task's default (e.g. a held-out fold)."""
    reported_split: Literal["test", "validation"] = "test"
    """What the reported splits are: ``validation`` for a pilot whose ``test_sources`` are all validation splits (it
    must not read a test split before the study is sized), so that its report says so where it would say test."""
    validation_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task, the validation split that averaging selects on (never a test split)."""
    generate: bool = False
    """Also score the medical tasks by greedy generation + answer extraction (LMFlow-comparable)."""
    generate_tasks: Names | None = None
    """generate: the tasks also scored by generation (None: every medical multiple-choice task in its lm-eval
    formulation). E.g. [pubmedqa, medmcqa, medqa4], the LMFlow-comparable ones, where the MMLU subjects'
    bare "Answer:" prompts mostly decode nothing a parser can read."""
    generate_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task, the split scored by generation when it is not the task's test source (e.g. a smaller
    fold of it where decoding every item would not fit the time budget)."""

    @model_validator(mode="after")
    def _sources_name_tasks(self) -> "StudyEvalConfig":
        for name in self.chat_template if isinstance(self.chat_template, list) else []:
            if name not in self.task_names:
                raise ValueError(f"chat_template: {name!r} is not one of the study's tasks ({', '.join(self.task_names)})")
        for name in self.generate_tasks or []:
            task = TASKS.get(name)
            if name not in self.task_names or task is None or task.kind != "mc" or task.template is not None:
                raise ValueError(f"generate_tasks: {name!r} is not one of the study's multiple-choice tasks in their "
                                 "lm-eval formulation (a cloze or perplexity task has nothing to decode)")
        for field in ("test_sources", "validation_sources", "generate_sources"):
            for name in getattr(self, field):
                if name not in TASKS:
                    raise ValueError(f"{field}: unknown task {name!r} (valid: {', '.join(TASKS)})")
        return self


class AveragingConfig(SweepSettings):
    """The averaging sweep between the base model and each tuned variant, and how the winner is chosen: the
    sweep's settings (SweepSettings), plus which variants to sweep and which other points to report. Each task
    of medical_tasks / general_tasks, and each task of a group there, needs a validation source."""

    variants: Names | None = None
    """Variants to sweep (default: all). Every variant is still scored at alpha 0 and 1 for selection."""
    test_best_of: list[str] = Field(default_factory=list)
    """Also score on the test splits, for each swept variant, the best point of each listed kind -- "uniform"
    (linear, 0 < alpha < 1), "hma", or a method of `methods` -- picked by the rule on validation among points
    of its kind, when it is not the selected point already. Reported next to the selected model, never shipped;
    with a `search`, test_best_of: [search, grid] reports the best of each on test."""

    @model_validator(mode="after")
    def _kinds(self) -> "AveragingConfig":
        kinds = ["uniform", "hma", *self.methods, *(["search", "grid"] if self.search else [])]
        for kind in self.test_best_of:
            if kind not in kinds:
                raise ValueError(f"test_best_of: {kind!r} is not swept (valid: {', '.join(kinds)})")
        return self


class StudyConfig(ConfigFile, Placed):
    """A whole study: base model, training variants, evaluation, averaging, report."""

    name: str = "study"
    """Title of the report."""
    out: str = "runs/study"
    """Study directory (relative to the current directory, or see out_base): one sub-directory per step."""
    out_base: Literal["cwd", "study_file"] = "cwd"
    """What a relative `out` is relative to: the current directory (cwd), or the study file's directory
    (study_file). The study.yaml a study saves in its directory has `out: .` and `study_file`, so
    `medtune study OUT/study.yaml` runs on that directory from any directory, also once it is moved
    (an --out given with it is then relative to that directory too)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model every variant starts from."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training data shared by the variants (a variant may change general_share). The study adds
    every evaluation and validation split to the leakage guard."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Training settings shared by the variants (any `medtune train` field but model, data, out)."""
    variants: list[VariantConfig] = Field(default_factory=lambda: [VariantConfig(name="lora")])
    """The trained models to compare."""
    evaluation: StudyEvalConfig = Field(default_factory=StudyEvalConfig)
    """Reported (test) and selecting (validation) evaluation."""
    averaging: AveragingConfig = Field(default_factory=AveragingConfig)
    """Weight averaging between the base and each variant."""
    train_launcher: list[str] | None = None
    """Run training steps as `LAUNCHER -m medtune train CONFIG`, e.g. [accelerate, launch, --config_file,
    configs/accelerate/ddp.yaml] for several GPUs; default: in this process."""
    eval_launcher: list[str] | None = None
    """Run evaluation steps as `LAUNCHER -m medtune eval CONFIG`, e.g. [accelerate, launch, --multi_gpu,
    --num_processes, 8]: each process scores a shard of the items on its own GPU; default: in this process."""
    progress: bool = True
    """Show progress bars."""
    trained_elsewhere: list[str] = Field(default_factory=list)
    """Set by `--only` in a part's saved study: the whole study's variants outside this part that its
    multi-parent search averages (averaging.search.parents); their training is read from the study
    directory, where their own part ran it."""
    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        names = [v.name for v in self.variants]
        if not names:
            raise ValueError("variants: give at least one variant")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: repeated names {dup}")
        for owned in _STUDY_OWNED:
            if owned in self.train:
                raise ValueError(f"train.{owned}: set by the study (use the study's `{owned}` section instead)")
        for i, v in enumerate(self.variants):
            for owned in _STUDY_OWNED:
                if owned in v.train:
                    raise ValueError(f"variants.{i}.train.{owned}: set by the study")
            self.train_config(v, Path("."))  # validates the merged training settings now
        controls = [v.name for v in self.variants if v.is_control]
        if len(controls) > 1:
            raise ValueError(f"variants: {', '.join(controls)} are all general-text controls; give one (the "
                             "report compares every model with the control)")
        if controls and not self.data.replay:
            raise ValueError(f"variants: the control {controls[0]!r} trains on general text only: give data.replay "
                             "sources (the general text it trains on)")
        for name in self.averaging.variants or []:
            if name not in names:
                raise ValueError(f"averaging.variants: unknown variant {name!r} (variants: {', '.join(names)})")
        parents = self.averaging.search.parents if self.averaging.search else []
        for name in parents:
            if name not in names and name not in self.trained_elsewhere:
                raise ValueError(f"averaging.search.parents: unknown variant {name!r} (variants: {', '.join(names)})")
        if parents and parents[0] not in self.swept:
            raise ValueError(f"averaging.search.parents: the search runs in the sweep of the first parent, "
                             f"{parents[0]!r}, which is not in averaging.variants")
        ev = self.evaluation
        for field in ("medical_tasks", "general_tasks"):
            for t in expand(getattr(self.averaging, field))[0]:
                if t not in ev.validation_sources:
                    raise ValueError(f"averaging.{field}: task {t!r} has no entry in evaluation.validation_sources; "
                                     "the study selects on validation splits only, never on a test split")
        self._one_writer_per_step_dir()
        return self

    def _one_writer_per_step_dir(self) -> None:
        """Refuse variant names that make two steps share a directory (a variant ``base`` and the base
        model's ``eval/base``; ``lora-averaged`` and the averaged ``lora``): one would read the other's results."""
        first: dict[str, tuple[str, str]] = {}
        for name, owner in self.step_owners():
            key = Path(name).as_posix().lower()  # one directory on a case-insensitive file system too
            if key in first and first[key][1] != owner:
                raise ValueError(f"variants: {owner} and {first[key][1]} would both write the step directory "
                                 f"{first[key][0]}, so one would report the other's results: rename the variant")
            first.setdefault(key, (name, owner))

    def step_owners(self) -> list[tuple[str, str]]:
        """(step directory, what writes it) for every step the study can run, the ones that wait for a
        sweep included: the study's plan at stand-in sweep points (the steps' names do not depend on them)."""
        from medtune.study import plan as P
        from medtune.study.layout import StudyLayout

        items = [i for i in P.plan(self, StudyLayout(Path(self.out)), P.StandIn(tuple(self.swept)))
                 if isinstance(i, P.Planned)]
        rank = {v.name: n for n, v in enumerate(self.variants)}
        # variant by variant, its comparison points with it: a clash is named as a reader of `variants` meets it
        items.sort(key=lambda i: len(rank) if i.kind == "report" else rank.get(i.variant or "", -1))
        return [(i.name, i.owner) for i in items]

    def train_config(self, variant: VariantConfig, out: Path) -> Any:
        """The full training config of ``variant`` (shared settings, then the variant's), writing to ``out``."""
        from medtune.train.config import TrainConfig

        merged: dict[str, Any] = {**self.train, **variant.train}
        data = self.data.model_copy(deep=True)
        if "tokenizer" not in self.data.model_fields_set:  # count and pack tokens with the model's own tokenizer
            data.tokenizer = self.model.spec
        if variant.share is not None:
            data.general_share = variant.share
        merged.update({"model": self.model.model_dump(), "data": data.model_dump(), "out": str(out),
                       "progress": self.progress, "base_dir": self.base_dir})
        i = self.variants.index(variant)
        try:
            return TrainConfig.model_validate(merged)
        except ValidationError as err:
            text = format_validation_error(err, "study").replace("study: ", f"variants.{i}.train.")
            raise ValueError(text) from None

    def out_dir(self) -> Path:
        """The study directory, ``out`` resolved as ``out_base`` says."""
        return Path(self.base_dir or ".") / self.out if self.out_base == "study_file" else Path(self.out)

    def saved_file(self, at: Path | None = None) -> str:
        """This study as the study.yaml it keeps in directory ``at`` (default: the study directory; a part
        run with --only keeps its own under it), which reloads to the same steps and fingerprints from any
        directory: every setting written out (defaults too, so a later medtune with other defaults still
        reruns this study), but not data.tokenizer when it was not given (unset, it is the model's own
        tokenizer, see `train_config`); ``out`` and relative data roots are written relative to ``at`` (so
        the study moves with its data), a local model path absolute."""
        out = self.out_dir().resolve()
        here = (at or out).resolve()
        data = self.model_dump(mode="json", include=set(StudyConfig.model_fields) - {"base_dir"})
        if "tokenizer" not in self.data.model_fields_set:
            del data["data"]["tokenizer"]
        data.update(out=os.path.relpath(out, here), out_base="study_file")
        for section in (data["data"], data["evaluation"]):
            if not Path(section["data_root"]).expanduser().is_absolute():
                section["data_root"] = os.path.relpath(self.root(section["data_root"]), here)
        for section, key in ((data["model"], "spec"), (data["data"], "tokenizer")):
            if key in section and Path(section[key]).expanduser().exists():  # a local path, else a name
                section[key] = str(Path(section[key]).expanduser().resolve())
        StudyConfig.model_validate(data)
        head = ("# The study as it ran, saved by `medtune study`: `medtune study THIS_FILE` reproduces it from any\n"
                "# directory (finished steps are skipped). Relative paths are relative to this file's directory.\n")
        return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def root(self, relative: str) -> Path:
        """``relative`` resolved against the study file's directory (the one relative-path rule)."""
        return self.resolve(relative)

    @property
    def swept(self) -> list[str]:
        """The variants the averaging sweep runs on: averaging.variants, else every variant but the control."""
        if self.averaging.variants is not None:
            return self.averaging.variants
        return [v.name for v in self.variants if not v.is_control]

    def has_sweep(self, variant: str) -> bool:
        """Whether ``variant`` has an averaging sweep (every variant, alpha 0 and 1 at least, which makes it a
        shipping candidate), but the control when averaging.variants does not name it."""
        return variant in self.swept or variant != self.control

    @property
    def control(self) -> str | None:
        """The general-text control variant's name, if the study has one."""
        return next((v.name for v in self.variants if v.is_control), None)
