"""Gather the study's results from its step directories into one :class:`~medtune.study_records.StudyResults`.

Each step's output is read through the record its stage owns (``EvalResult``, ``SweepResult``,
the training run's curves and data manifest); paths come from :class:`StudyLayout`; the shipping
choice applies the averaging rule (:class:`~medtune.merge.selection.SelectionRule`) to the base
and every variant's selected point -- the same rule the sweeps and the comparison points use.

Steps named ``stale`` (their settings or inputs changed since they ran: what is on disk is not what
the study now asks for) are left out, as if they had not run, and listed in the results.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from pathlib import Path

from medtune.data.manifest import DataManifest
from medtune.evaluate.records import EvalResult
from medtune.merge.records import SweepResult
from medtune.merge.selection import Point, SelectionRule
from medtune.study_records import (Candidate, MixSummary, ModelEval, ShipChoice, StepTime, StudyResults, TrainSummary,
                             Validation)
from medtune.study.config import StudyConfig
from medtune.study.layout import StepState, StudyLayout
from medtune.train.records import TrainCurves


def selection_rule(cfg: StudyConfig) -> SelectionRule:
    av = cfg.averaging
    return SelectionRule(av.rule, av.retain, av.weight)


def _row(layout: StudyLayout, label: str, kind: str, step: str, stale: Collection[str] = (),
         **fields: object) -> ModelEval | None:
    res = EvalResult.load(layout.step_dir(step)) if step not in stale else None
    if res is None:
        return None
    return ModelEval(label=label, kind=kind, step=step, result=res,  # type: ignore[arg-type]
                     predictions=layout.step_dir(step) / "predictions.jsonl", **fields)  # type: ignore[arg-type]


def _sweep(layout: StudyLayout, variant: str, stale: Collection[str] = ()) -> SweepResult | None:
    """The sweep of ``variant`` as far as it ran, unless it is stale."""
    return None if layout.sweep_step(variant) in stale else SweepResult.load(layout.sweep_results(variant))


def model_rows(cfg: StudyConfig, layout: StudyLayout, generate: bool, stale: Collection[str] = ()) -> list[ModelEval]:
    """Base, then per variant: tuned, its selected averaged model, and the points reported for comparison."""
    L = StudyLayout
    rows: list[ModelEval] = []
    base = _row(layout, "base", "base", L.eval_step("base", generate), stale)
    rows += [base] if base else []
    for v in cfg.variants:
        kind = "control" if v.name == cfg.control else "tuned"
        tuned = _row(layout, v.name, kind, L.eval_step(v.name, generate), stale, variant=v.name)
        rows += [tuned] if tuned else []
        res = _sweep(layout, v.name, stale)
        sel = res.selected_point if res else None
        if res is None or sel is None:
            continue
        end = sel.is_endpoint()
        label = f"{v.name} · {sel.label}"
        if end is not None:  # the sweep picked the base or the tuned model itself: repeat its row
            same = base if end == 0 else tuned
            if same is not None:
                rows.append(same.model_copy(update={
                    "label": label, "kind": "averaged", "variant": v.name, "point": sel,
                    "note": f"= {'base' if end == 0 else v.name}: the sweep selected α={end:g}"}))
        else:
            avg = _row(layout, label, "averaged", L.eval_step(L.averaged_label(v.name), generate), stale,
                       variant=v.name, point=sel)
            rows += [avg] if avg else []
        for kind in cfg.averaging.test_best_of:  # reported for comparison, never shipped
            pt = res.best(kind)
            if pt is None or pt.identity == sel.identity:
                continue
            note = f"best {'uniform α' if kind == 'uniform' else kind} point on validation, for comparison"
            cmp = _row(layout, f"{v.name} · {pt.label}", "compared", L.eval_step(L.averaged_label(v.name, kind), generate),
                       stale, variant=v.name, point=pt, note=note)
            rows += [cmp] if cmp else []
    return rows


def ship_choice(cfg: StudyConfig, layout: StudyLayout, rows: list[ModelEval],
                stale: Collection[str] = ()) -> ShipChoice | None:
    """The model to ship: the rule applied, on validation scores, to the base and every variant's
    selected averaged model (alpha = 1 being the tuned model itself); None until every sweep is done
    (and current)."""
    cands: list[Candidate] = []
    base_general = None
    for v in cfg.variants:
        if not cfg.has_sweep(v.name):  # the control is no candidate
            continue
        res = _sweep(layout, v.name, stale)
        sel = res.selected_point if res else None
        if res is None or sel is None or res.base_general is None:
            return None
        if base_general is None:
            base_general = res.base_general
            b = res.find("linear", {"alpha": 0.0})
            cands.append(Candidate(label="base", variant=None, medical=b.medical, general=b.general))  # type: ignore[union-attr]
        cands.append(Candidate(label=f"{v.name} · {sel.label}", variant=v.name, medical=sel.medical,
                               general=sel.general, point=sel))
    if base_general is None:
        return None
    rule = selection_rule(cfg)
    idx = rule.pick([Point(c.label, c.medical, c.general) for c in cands], base_general)
    pick = cands[idx]
    row = next((r.label for r in rows if (pick.variant is None and r.kind == "base")
                or (r.variant == pick.variant and r.kind == "averaged")), None)
    return ShipChoice(candidates=cands, selected=idx, rule=rule, base_general=base_general, row=row)


def train_summaries(cfg: StudyConfig, layout: StudyLayout,
                    stale: Collection[str] = ()) -> tuple[dict[str, TrainSummary], dict[str, MixSummary]]:
    """Per variant that trained: its run and loss history (curves.json) and the data it used (manifest.json)."""
    train, mix = {}, {}
    for v in cfg.variants:
        if layout.train_step(v.name) in stale:
            continue
        curves = TrainCurves.load(layout.curves(v.name))
        if curves:
            train[v.name] = TrainSummary(run=curves.run, seconds=round(curves.seconds, 1), history=curves.history,
                                         method=cfg.train_config(v, layout.root).method,
                                         validation=curves.validation or [], selected=curves.selected)
        m = DataManifest.load(layout.manifest(v.name))
        if m:
            mix[v.name] = MixSummary(general_share_target=m.mix.general_share_target if m.mix else 0.0,
                                     general_share_realised=m.packing.general_share,
                                     source_tokens=m.packing.source_tokens, blocks=m.packing.blocks,
                                     block_size=m.packing.block_size, leakage_dropped=m.leakage.dropped_items)
    return train, mix


def step_times(layout: StudyLayout, stale: Collection[str] = ()) -> list[StepTime]:
    """Wall time of every finished step (from its state file, summed over its sittings) that is not stale, in
    the order they finished."""
    times = []
    for path in layout.state_files():
        st = StepState.load(path)
        if st is not None and st.state == "done" and st.seconds is not None and st.step not in ("report", *stale):
            times.append(StepTime(step=st.step, seconds=st.seconds, finished=st.finished or "", sittings=st.sittings or 1))
    return sorted(times, key=lambda t: (t.finished, t.step))


def commands(cfg: StudyConfig, layout: StudyLayout, stale: Collection[str] = ()) -> list[str]:
    """The command that reproduces the study (a part: with its --only), then each step's own command
    with its saved config (stale steps' configs left out: they are not what the study now asks for)."""
    study = f"medtune study {shlex.quote(str(layout.study_file()))}"
    if layout.part is not None:
        study += f" --only {','.join(v.name for v in cfg.variants)}"
    lines = [f"# the whole {'part' if layout.part else 'study'} (finished steps are skipped):", study,
             "# or step by step, from the configs each step saved:"]
    step_of = lambda d: d.parent.relative_to(layout.root).as_posix()
    for v in cfg.variants:
        if layout.train_step(v.name) not in stale:
            lines.append(f"medtune train {shlex.quote(str(layout.step_dir(layout.train_step(v.name)) / 'config.yaml'))}")
    for d in layout.step_configs("eval") + layout.step_configs("eval-gen"):
        if step_of(d) not in stale:
            lines.append(f"medtune eval {shlex.quote(str(d))}")
    for kind in ("sweep", "merge"):
        for d in layout.step_configs(kind):
            if step_of(d) not in stale:
                lines.append(f"medtune {kind} {shlex.quote(str(d))}")
    return lines


def gather(cfg: StudyConfig, layout: StudyLayout, stale: Collection[str] = ()) -> StudyResults:
    """The study's results as far as its steps have run, ``stale`` steps left out (and listed)."""
    rows = model_rows(cfg, layout, generate=False, stale=stale)
    train, mix = train_summaries(cfg, layout, stale)
    sweeps = {v.name: s for v in cfg.variants if (s := _sweep(layout, v.name, stale)) is not None}
    av, ev = cfg.averaging, cfg.evaluation
    return StudyResults(
        name=cfg.name, model=cfg.model.spec, tasks=ev.task_names, groups=ev.group_names,
        listed=[t for t in ev.tasks if t not in ev.group_names],
        validation=Validation(medical=av.medical_tasks, general=av.general_tasks, limit=av.limit,
                              sources=dict(ev.validation_sources)),
        rows=rows, gen_rows=model_rows(cfg, layout, generate=True, stale=stale), sweeps=sweeps,
        ship=ship_choice(cfg, layout, rows, stale), train=train, mix=mix, steps=step_times(layout, stale),
        commands=commands(cfg, layout, stale), stale=list(stale), reported_split=ev.reported_split)


def model_dir_of(row: ModelEval, layout: StudyLayout) -> Path | None:
    """The directory that makes a row's model on top of the base: none for the base, the merge
    directory for an averaged model (an adapter, or a full model for TIES / DARE / SLERP on LoRA), the
    trained one for a tuned model or an averaged one at alpha 1."""
    if not row.variant:
        return None
    end = row.point.is_endpoint() if row.point else None
    if row.kind == "averaged" and end == 0.0:
        return None
    if row.kind == "averaged" and end is None:
        return layout.merge_dir(row.variant)
    return layout.model_dir(row.variant)
