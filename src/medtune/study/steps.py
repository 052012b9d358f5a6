"""The study's steps: what each one runs, where it writes, and what it depends on.

A step is a stage config plus a directory. Its fingerprint is a hash of that config (without
fields that do not change the result, such as progress bars, and with its locations made portable:
:mod:`medtune.study.fingerprint`), of the content of the data files it reads, and of the fingerprints
of the steps it reads from, so changing one setting changes the fingerprints of exactly the steps
downstream of it, and moving the study (with its data) changes none. Steps whose config depends on an
earlier result (the merge at the alpha a sweep selected) are built once that result exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from medtune.config import ModelConfig
from medtune.data.registry import resolve_path
from medtune.data.spec import SourceConfig
from medtune.errors import MedtuneError
from medtune.evaluate.tasks import GROUPS, TASKS, expand
from medtune.merge.records import SweepPoint, SweepResult
from medtune.study import fingerprint
from medtune.study.config import StudyConfig, VariantConfig
from medtune.study.layout import StudyLayout as L

Kind = Literal["eval", "train", "sweep", "merge", "report"]


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
            except MedtuneError:  # reported before anything runs (study.run._missing_inputs)
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
        return Path(c.data_root).resolve() if self.kind in ("eval", "sweep") else None

    def inputs(self) -> list[tuple[str, SourceConfig, Path]]:
        """(what, source, data root) for every data source the step reads."""
        c: Any = self.config
        if self.kind == "train":
            return [(f"data.{role}", s, c.data.root()) for role in ("train", "replay", "eval") for s in getattr(c.data, role)]
        if self.kind in ("eval", "sweep"):
            names = c.task_names if self.kind == "eval" else f"{c.medical_tasks},{c.general_tasks}".split(",")
            tasks, _ = expand([n for n in names if n])  # groups read their member tasks' sources
            found = []
            for t in tasks:
                specs = [c.task_sources[t]] if t in c.task_sources else [TASKS[t].source, *TASKS[t].extra_sources]
                found += [(f"task {t}", SourceConfig.model_validate(spec), Path(c.data_root)) for spec in specs]
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


def eval_step(cfg: StudyConfig, out: Path, label: str, model: ModelConfig, adapter: str | None, deps: list[str],
              generate: bool = False) -> Step:
    from medtune.evaluate.run import EvalConfig

    ev = cfg.evaluation
    tasks = generated_tasks(cfg) if generate else ev.task_names
    groups = [g for g in ev.group_names if all(t in tasks for t in GROUPS[g].tasks)]
    name = L.eval_step(label, generate)
    ecfg = EvalConfig(model=model, adapter=adapter, tasks=",".join(tasks + groups), data_root=str(cfg.root(ev.data_root)),
                      task_defs=ev.task_defs, task_groups=ev.task_groups,
                      task_sources={t: test_source(cfg, t, generate) for t in tasks}, limit=ev.limit,
                      mode="generate" if generate else "loglikelihood", max_new_tokens=ev.max_new_tokens,
                      chat_template=generate and ev.chat_template,
                      ppl_max_tokens=ev.ppl_max_tokens, token_budget=ev.token_budget, out=str(out / name),
                      progress=cfg.progress, device=cfg.device, **({"ppl_stride": ev.ppl_stride} if ev.ppl_stride else {}))
    return Step(name, "eval", ecfg, deps)


def generated_tasks(cfg: StudyConfig) -> list[str]:
    """The tasks also scored by generation: ``evaluation.generate_tasks``, else the medical multiple-choice tasks
    in their lm-eval formulation (a cloze task's prompt shows no options to answer from; perplexity has
    nothing to generate)."""
    if cfg.evaluation.generate_tasks is not None:
        return list(cfg.evaluation.generate_tasks)
    return [t for t in cfg.evaluation.task_names
            if TASKS[t].kind == "mc" and TASKS[t].domain != "general" and TASKS[t].template is None]


def model_evals(cfg: StudyConfig, out: Path, label: str, model: ModelConfig, adapter: str | None,
                deps: list[str]) -> list[Step]:
    steps = [eval_step(cfg, out, label, model, adapter, deps)]
    if cfg.evaluation.generate and generated_tasks(cfg):
        steps.append(eval_step(cfg, out, label, model, adapter, deps, generate=True))
    return steps


def trained_model(cfg: StudyConfig, out: Path, variant: VariantConfig) -> tuple[ModelConfig, str | None]:
    """(model, adapter) that load a trained variant: base + adapter for LoRA, the weights for full."""
    model_dir = L(out).model_dir(variant.name)
    if cfg.train_config(variant, out).method == "lora":
        return cfg.model, str(model_dir)
    return cfg.model.model_copy(update={"spec": str(model_dir)}), None


def sweep_step(cfg: StudyConfig, out: Path, variant: VariantConfig) -> Step:
    from medtune.merge.sweep import SweepConfig

    av, ev = cfg.averaging, cfg.evaluation
    full = variant.name in cfg.swept
    root = cfg.root(ev.data_root)
    scfg = SweepConfig(base=cfg.model, tuned=str(L(out).model_dir(variant.name)),
                       alphas=av.alphas if full else [0.0, 1.0], hma_alphas=av.hma_alphas if full else [],
                       hma_blocks=av.hma_blocks, hma_grid=av.hma_grid, methods=av.methods if full else {},
                       medical_tasks=",".join(av.medical_tasks),
                       general_tasks=",".join(av.general_tasks),
                       task_sources={t: _absolute(ev.validation_sources[t], root)
                                     for t in expand(av.medical_tasks + av.general_tasks)[0]},
                       data_root=str(root), limit=av.limit, rule=av.rule, retain=av.retain, weight=av.weight,
                       ppl_max_tokens=ev.ppl_max_tokens, ppl_stride=ev.ppl_stride,
                       out=str(L(out).sweep_dir(variant.name)), progress=cfg.progress, search=av.search if full else None,
                       device=cfg.device)
    return Step(L.sweep_step(variant.name), "sweep", scfg, [L.train_step(variant.name)],
                note="" if full else "alpha 0 and 1 only (not in averaging.variants)")


def static_plan(cfg: StudyConfig, out: Path) -> list[Step]:
    """Every step whose config is known before anything runs, in run order."""
    gcfg = guarded_data(cfg)
    steps = model_evals(cfg, out, "base", cfg.model, None, [])
    for v in cfg.variants:
        steps.append(Step(L.train_step(v.name), "train", gcfg.train_config(v, L(out).step_dir(L.train_step(v.name)))))
        model, adapter = trained_model(cfg, out, v)
        steps += model_evals(cfg, out, v.name, model, adapter, [L.train_step(v.name)])
        steps.append(sweep_step(cfg, out, v))
    return steps


def sweep_result(out: Path, variant: str) -> SweepResult | None:
    """The sweep of ``variant`` as far as it has run (None before it starts)."""
    return SweepResult.load(L(out).sweep_results(variant))


def selected_point(out: Path, variant: str) -> SweepPoint | None:
    """The sweep's selected point for ``variant`` (None while the sweep is not complete)."""
    res = sweep_result(out, variant)
    return res.selected_point if res else None


def best_of_kind(out: Path, variant: str, kind: str) -> SweepPoint | None:
    """The sweep point of ``kind`` (a method name; "uniform" is linear with 0 < alpha < 1) that the
    averaging rule picks on validation among points of that kind (None when the sweep has none)."""
    res = sweep_result(out, variant)
    return res.best(kind) if res else None


def averaged_plan(cfg: StudyConfig, out: Path, variant: VariantConfig, point: SweepPoint,
                  suffix: str = "averaged") -> list[Step]:
    """The merge at a sweep point and its evaluation; none when the point is the base or the tuned model.
    ``suffix`` "averaged" is the selected point (``merge/V``, ``eval/V-averaged``); another suffix is a
    point reported for comparison (``merge/V-SUFFIX``, ``eval/V-SUFFIX``). A LoRA variant merged by a
    method exact in LoRA space is an adapter on the base; by TIES / DARE / SLERP a full model."""
    from medtune.merge.methods import method
    from medtune.merge.run import MergeConfig

    if point.is_endpoint() is not None:
        return []
    merged = L(out).merge_dir(variant.name, suffix)
    mcfg = MergeConfig(base=cfg.model, tuned=[str(L(out).model_dir(variant.name))], method=point.method,
                       params=point.params, out=str(merged), device=cfg.device)
    merge = Step(L.merge_step(variant.name, suffix), "merge", mcfg, [L.sweep_step(variant.name)], note=point.label)
    adapter = cfg.train_config(variant, out).method == "lora" and method(point.method).lora is not None
    model = cfg.model if adapter else cfg.model.model_copy(update={"spec": str(merged)})
    return [merge, *model_evals(cfg, out, L.averaged_label(variant.name, suffix), model, str(merged) if adapter else None,
                                [merge.name])]


def compared_plan(cfg: StudyConfig, out: Path, variant: VariantConfig, selected: SweepPoint) -> list[Step]:
    """Merges and test evaluations of ``averaging.test_best_of`` points that differ from the selected one."""
    steps: list[Step] = []
    if variant.name not in cfg.swept:
        return steps
    for kind in cfg.averaging.test_best_of:
        point = best_of_kind(out, variant.name, kind)
        if point is not None and point.identity != selected.identity:
            steps += averaged_plan(cfg, out, variant, point, suffix=kind)
    return steps


def step_owners(cfg: StudyConfig) -> list[tuple[str, str]]:
    """(step directory, what writes it) for every step the study can run, the ones that wait for a
    sweep included (built at a stand-in point: their names do not depend on it)."""
    out = Path(cfg.out)
    point = SweepPoint(method="linear", params={"alpha": 0.5}, label="stand-in", medical=0.0, general=0.0)
    owned = [(s.name, "the base model's evaluation") for s in model_evals(cfg, out, "base", cfg.model, None, [])]
    gcfg = guarded_data(cfg)
    for v in cfg.variants:
        train = Step(L.train_step(v.name), "train", gcfg.train_config(v, L(out).step_dir(L.train_step(v.name))))
        mine = [train, *model_evals(cfg, out, v.name, *trained_model(cfg, out, v), []), sweep_step(cfg, out, v)]
        owned += [(s.name, f"variant '{v.name}'") for s in mine]
        for suffix in ["averaged", *cfg.averaging.test_best_of] if v.name in cfg.swept else []:
            owned += [(s.name, f"the {suffix} model of variant '{v.name}'")
                      for s in averaged_plan(cfg, out, v, point, suffix)]
    return [*owned, ("report", "the report")]
