"""The study's steps: what each one runs, where it writes, and what it depends on.

A step is a planned step (:mod:`medtune.study.plan`) with the stage config its kind builds (:data:`KINDS`:
kind -> config type, builder, run function). Its fingerprint is a hash of that config (without
fields that do not change the result, such as progress bars, and with its locations made portable:
:mod:`medtune.study.fingerprint`), of the content of the data files it reads, and of the fingerprints
of the steps it reads from, so changing one setting changes the fingerprints of exactly the steps
downstream of it, and moving the study (with its data) changes none. Steps whose config depends on an
earlier result (the merge at the alpha a sweep selected) are built once that result exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medtune import atomic
from medtune.config import ModelConfig, dump_config
from medtune.data.registry import resolve_path
from medtune.data.spec import SourceConfig
from medtune.errors import MedtuneError
from medtune.evaluate.tasks import GROUPS, TASKS, expand
from medtune.study import fingerprint
from medtune.study import plan as P
from medtune.study.config import StudyConfig, VariantConfig
from medtune.study.layout import StudyLayout
from medtune.study.plan import Kind, Planned, Waiting, generated_tasks


@dataclass
class Step:
    name: str
    """Also the step's directory under the study directory, e.g. ``train/lora``."""
    kind: Kind
    config: BaseModel | None
    """The stage's config (None for the report, whose inputs are the other steps)."""
    deps: list[str] = field(default_factory=list)
    note: str = ""

    def basis(self, upstream: dict[str, str], out: Path) -> dict[str, Any]:
        """What the fingerprint hashes (key path -> value), given the fingerprints of the steps before it
        and the study directory ``out``; kept in the step's state to say what changed."""
        reads = []
        for _, src, root in self.inputs():
            try:
                path = resolve_path(src, root)
            except MedtuneError:  # reported before anything runs (study.run._unreadable_inputs)
                continue
            if path is not None:
                reads.append(path)
        flat = fingerprint.basis(self.config, out, self.data_root(), reads)
        return {"kind": self.kind, **flat, **{f"deps.{d}": upstream[d] for d in self.deps}}

    def legacy_fingerprint(self, upstream: dict[str, str]) -> str:
        """The fingerprint medtune wrote before state files kept the basis (a hash of the config as is,
        absolute paths included, and of these fingerprints of the steps before): a step finished then
        is still done, once, if nothing changed, and its state is upgraded."""
        cfg = self.config.model_dump(mode="json", exclude={"progress", "resume", "device"}) if self.config is not None else None
        text = json.dumps({"kind": self.kind, "config": cfg, "deps": [upstream[d] for d in self.deps]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def data_root(self) -> Path | None:
        """The directory the step's relative data paths resolve against (None: it reads no data files)."""
        c: Any = self.config
        if self.kind == "train":
            return c.data.root()
        return c.root() if self.kind in ("eval", "sweep") else None

    def inputs(self) -> list[tuple[str, SourceConfig, Path]]:
        """(what, source, data root) for every data source the step reads."""
        c: Any = self.config
        if self.kind == "train":
            return [(f"data.{role}", s, c.data.root()) for role in ("train", "replay", "eval") for s in getattr(c.data, role)]
        if self.kind in ("eval", "sweep"):
            names = c.task_names if self.kind == "eval" else c.medical_tasks + c.general_tasks
            tasks, _ = expand(names)  # groups read their member tasks' sources
            found = []
            for t in tasks:
                specs = [c.task_sources[t]] if t in c.task_sources else [TASKS[t].source, *TASKS[t].extra_sources]
                found += [(f"task {t}", SourceConfig.model_validate(spec), c.root()) for spec in specs]
            return found
        return []


def _absolute(src: SourceConfig, root: Path) -> SourceConfig:
    """``src`` with its path made absolute against ``root`` (so it means the same from any config)."""
    if src.path is None or Path(src.path).expanduser().is_absolute():
        return src
    return src.model_copy(update={"path": str(root / src.path)})


def test_source(cfg: StudyConfig, task: str, generate: bool = False) -> SourceConfig:
    """The split a task reports on: its generation source when ``generate`` and one is set, else its
    test source, else the task's default."""
    ev = cfg.evaluation
    src = (generate and ev.generate_sources.get(task)) or ev.test_sources.get(task) \
        or SourceConfig.model_validate(TASKS[task].source)
    return _absolute(src, cfg.root(cfg.evaluation.data_root))


def guarded_data(cfg: StudyConfig) -> StudyConfig:
    """The study with every QA test and validation split added to the training data's leakage guard."""
    from medtune.data.registry import TEXT_ADAPTERS

    root = cfg.root(cfg.evaluation.data_root)
    tasks = cfg.evaluation.task_names
    # every scored text: perplexity tasks too (ppl_medical reads QA items' prose: never train on it)
    extra = [test_source(cfg, t) for t in tasks]
    extra += [_absolute(SourceConfig.model_validate(s), root) for t in tasks
              if t not in cfg.evaluation.test_sources for s in TASKS[t].extra_sources]
    if cfg.evaluation.generate:
        extra += [test_source(cfg, t, generate=True) for t in generated_tasks(cfg)]
    extra += [_absolute(s, root) for s in cfg.evaluation.validation_sources.values()]
    have = {json.dumps(s.model_dump(mode="json"), sort_keys=True) for s in cfg.data.eval}
    added = []
    for s in extra:
        key = json.dumps(s.model_dump(mode="json"), sort_keys=True)
        if s.adapter not in TEXT_ADAPTERS and key not in have:
            have.add(key)
            added.append(s)
    data = cfg.data.model_copy(update={"eval": [*cfg.data.eval, *added]})
    return cfg.model_copy(update={"data": data})


def _eval_config(cfg: StudyConfig, layout: StudyLayout, step: Planned) -> BaseModel:
    from medtune.evaluate.run import EvalConfig

    ev = cfg.evaluation
    model, adapter = _evaluated_model(cfg, layout, step)
    tasks = generated_tasks(cfg) if step.generate else ev.task_names
    groups = [g for g in ev.group_names if all(t in tasks for t in GROUPS[g].tasks)]
    return EvalConfig(model=model, adapter=adapter, tasks=tasks + groups, data_root=str(cfg.root(ev.data_root)),
                      task_defs=ev.task_defs, task_groups=ev.task_groups,
                      task_sources={t: test_source(cfg, t, step.generate) for t in tasks}, limit=ev.limit,
                      mode="generate" if step.generate else "loglikelihood", max_new_tokens=ev.max_new_tokens,
                      chat_template=step.generate and ev.chat_template,
                      ppl_max_tokens=ev.ppl_max_tokens, token_budget=ev.token_budget,
                      out=str(layout.step_dir(step.name)), progress=cfg.progress, device=cfg.device,
                      **ev.model_dump(include={"ppl_stride"} & ev.model_fields_set))


def _evaluated_model(cfg: StudyConfig, layout: StudyLayout, step: Planned) -> tuple[ModelConfig, str | None]:
    """(model, adapter) an evaluation loads: the base model, a trained variant, or a merge. A LoRA variant merged
    by a method exact in LoRA space is an adapter on the base; by TIES / DARE / SLERP a full model. A point of a
    multi-parent search merges its parents, an adapter only when all are LoRA."""
    from medtune.merge.methods import method

    if step.variant is None:
        return cfg.model, None
    if step.point is None or step.suffix is None:
        return trained_model(cfg, layout, _variant(cfg, step.variant))
    from medtune.merge.sources import adapter_dir

    merged = layout.merge_dir(step.variant, step.suffix)
    if step.point.parents:  # a point of a multi-parent search: an adapter only when every parent is LoRA
        lora = all(adapter_dir(t) is not None for t in step.point.parents)
    else:
        lora = cfg.train_config(_variant(cfg, step.variant), layout.root).method == "lora"
    if lora and method(step.point.method).lora is not None:
        return cfg.model, str(merged)
    return cfg.model.model_copy(update={"spec": str(merged)}), None


def _variant(cfg: StudyConfig, name: str) -> VariantConfig:
    return next(v for v in cfg.variants if v.name == name)


def trained_model(cfg: StudyConfig, layout: StudyLayout, variant: VariantConfig) -> tuple[ModelConfig, str | None]:
    """(model, adapter) that load a trained variant: base + adapter for LoRA, the weights for full."""
    model_dir = layout.model_dir(variant.name)
    if cfg.train_config(variant, layout.root).method == "lora":
        return cfg.model, str(model_dir)
    return cfg.model.model_copy(update={"spec": str(model_dir)}), None


def _train_config(cfg: StudyConfig, layout: StudyLayout, step: Planned) -> BaseModel:
    assert step.variant is not None
    return guarded_data(cfg).train_config(_variant(cfg, step.variant), layout.step_dir(step.name))


def _sweep_config(cfg: StudyConfig, layout: StudyLayout, step: Planned) -> BaseModel:
    from medtune.merge.sweep import SweepConfig

    assert step.variant is not None
    av, ev = cfg.averaging, cfg.evaluation
    full = step.variant in cfg.swept
    root = cfg.root(ev.data_root)
    search, parents = av.search if full else None, av.search.parents if av.search else []
    if search is not None and parents:  # several variants averaged: searched once, in the first one's sweep
        dirs = [str(layout.model_dir(n)) for n in parents]
        search = search.model_copy(update={"parents": dirs}) if step.variant == parents[0] else None
    return SweepConfig(base=cfg.model, tuned=str(layout.model_dir(step.variant)),
                       alphas=av.alphas if full else [0.0, 1.0], hma_alphas=av.hma_alphas if full else [],
                       hma_blocks=av.hma_blocks, hma_grid=av.hma_grid, methods=av.methods if full else {},
                       medical_tasks=av.medical_tasks, general_tasks=av.general_tasks,
                       task_sources={t: _absolute(ev.validation_sources[t], root)
                                     for t in expand(av.medical_tasks + av.general_tasks)[0]},
                       data_root=str(root), limit=av.limit, rule=av.rule, retain=av.retain, weight=av.weight,
                       ppl_max_tokens=ev.ppl_max_tokens, ppl_stride=ev.ppl_stride,
                       out=str(layout.step_dir(step.name)), progress=cfg.progress, search=search,
                       device=cfg.device)


def _merge_config(cfg: StudyConfig, layout: StudyLayout, step: Planned) -> BaseModel:
    from medtune.merge.run import MergeConfig

    assert step.variant is not None and step.point is not None
    tuned = step.point.parents or [str(layout.model_dir(step.variant))]  # a multi-parent point merges its parents
    return MergeConfig(base=cfg.model, tuned=tuned, method=step.point.method,
                       params=step.point.params, out=str(layout.step_dir(step.name)), device=cfg.device)


def _launch(step: Step, layout: StudyLayout, launcher: list[str], config: Any, extra: list[str] | None = None) -> None:
    """Run a step's stage as ``LAUNCHER -m medtune KIND CONFIG`` (accelerate launch: one process per GPU), its
    config written next to its outputs first."""
    import subprocess

    path = layout.launcher_config(step.name, step.kind)
    atomic.write_text(path, dump_config(config))
    cmd = [*launcher, "-m", "medtune", step.kind, str(path), *(extra or [])]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise MedtuneError(f"{step.name}: the {step.kind} command failed: {' '.join(cmd)}")


def _run_eval(step: Step, cfg: StudyConfig, layout: StudyLayout, resume: bool) -> None:
    """Evaluate in this process, or through the study's ``eval_launcher`` (data-parallel scoring); ``resume``
    reuses the tasks an interrupted run of the step finished (``EvalConfig.resume``)."""
    ecfg = step.config.model_copy(update={"resume": resume})  # type: ignore[union-attr]
    if cfg.eval_launcher:
        _launch(step, layout, cfg.eval_launcher, ecfg)
        return
    from medtune.evaluate.run import evaluate

    evaluate(ecfg)


def _run_train(step: Step, cfg: StudyConfig, layout: StudyLayout, resume: bool) -> None:
    """Train in this process, or through the study's ``train_launcher``; ``resume`` continues from the step's
    newest checkpoint, when it has one."""
    from medtune.train import checkpoint

    resume = resume and checkpoint.latest(layout.step_dir(step.name)) is not None
    tcfg = step.config.model_copy(update={"resume": resume})  # type: ignore[union-attr]
    if cfg.train_launcher:
        _launch(step, layout, cfg.train_launcher, tcfg, ["--resume"] if resume else [])
        return
    from medtune.train.run import train

    train(tcfg)


def _run_sweep(step: Step, cfg: StudyConfig, layout: StudyLayout, resume: bool) -> None:
    from medtune.merge.sweep import sweep

    atomic.write_text(layout.saved_config(step.name), dump_config(step.config))
    sweep(step.config)


def _run_merge(step: Step, cfg: StudyConfig, layout: StudyLayout, resume: bool) -> None:
    from medtune.merge.run import merge

    merge(step.config)
    atomic.write_text(layout.saved_config(step.name), dump_config(step.config))


def _run_report(step: Step, cfg: StudyConfig, layout: StudyLayout, resume: bool) -> None:
    from medtune.report.build import write_report
    from medtune.study.gather import gather

    write_report(gather(cfg, layout), layout.report_dir())


@dataclass(frozen=True)
class StepKind:
    """A kind of study step: its stage config type, how the study builds that config for a planned step, and
    the function that runs the step with it."""

    config: str | None
    """``module:Name`` of the stage config type (imported when used: some stages import torch)."""
    build: Callable[[StudyConfig, StudyLayout, Planned], BaseModel] | None
    run: Callable[[Step, StudyConfig, StudyLayout, bool], None]
    resumes: bool = False
    """An interrupted step continues where it stopped (training from its checkpoint, a sweep from its
    scored points); the others run again from the start."""
    keeps_when_stale: bool = False
    """A stale step's directory is kept (a sweep reuses the points its new config still asks for)."""

    def config_type(self) -> type[BaseModel] | None:
        if self.config is None:
            return None
        import importlib

        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, StepKind] = {
    "eval": StepKind("medtune.evaluate.run:EvalConfig", _eval_config, _run_eval, resumes=True),
    "train": StepKind("medtune.train.config:TrainConfig", _train_config, _run_train, resumes=True),
    "sweep": StepKind("medtune.merge.sweep:SweepConfig", _sweep_config, _run_sweep, resumes=True, keeps_when_stale=True),
    "merge": StepKind("medtune.merge.run:MergeConfig", _merge_config, _run_merge),
    "report": StepKind(None, None, _run_report),
}
"""Step kind -> its stage config and run function (the report's inputs are the other steps: no config)."""


def step_kind(kind: str) -> StepKind:
    """The entry of :data:`KINDS` for ``kind``; an unknown kind is an error that lists the valid ones."""
    if kind not in KINDS:
        raise MedtuneError(f"unknown step kind {kind!r} (valid: {', '.join(KINDS)})")
    return KINDS[kind]


def build(cfg: StudyConfig, layout: StudyLayout, planned: Planned) -> Step:
    """The step ``planned`` with the stage config its kind builds."""
    kind = step_kind(planned.kind)
    config = kind.build(cfg, layout, planned) if kind.build is not None else None
    want = kind.config_type()
    if want is not None and not isinstance(config, want):
        raise MedtuneError(f"{planned.name}: built a {type(config).__name__}, not the {planned.kind} step's {want.__name__}")
    return Step(planned.name, planned.kind, config, list(planned.deps), planned.note)


def built_plan(cfg: StudyConfig, layout: StudyLayout, points: P.Points | None = None) -> list[Step | Waiting]:
    """The study's plan (:func:`medtune.study.plan.plan`) as far as ``points`` tell (default: the sweeps on
    disk), each step with its stage config; steps not known yet stay :class:`Waiting`."""
    items = P.plan(cfg, layout, P.SweptPoints(layout) if points is None else points)
    return [build(cfg, layout, i) if isinstance(i, Planned) else i for i in items]


def static_plan(cfg: StudyConfig, out: Path) -> list[Step]:
    """Every step whose config is known before anything runs, in run order (the report aside)."""
    return [s for s in built_plan(cfg, StudyLayout(out), P.NoPoints()) if isinstance(s, Step) and s.kind != "report"]
