"""``medtune study STUDY.yaml``: base evaluation, training variants, their evaluation, the averaging
sweeps, the selected averaged models, and the report, resumably.

Each step writes into its own directory under the study directory and, next to its outputs, a
``.medtune-step.json`` with its fingerprint and state. A re-run skips every step whose state is
``done`` with the same fingerprint; a training step that was interrupted resumes from its newest
checkpoint; a step whose fingerprint changed (a setting it depends on changed) is run again. The
report is written anew on every run (it reads the other steps' results and takes under a second).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from medtune import atomic, outdir
from medtune.config import dump_config
from medtune.errors import ConfigError, MedtuneError
from medtune.evaluate.tasks import TASKS
from medtune.study import fingerprint
from medtune.study import steps as S
from medtune.study.config import StudyConfig
from medtune.study.layout import STATE, StudyLayout



class StudyRunConfig(StudyConfig):
    """A study file plus how to run it."""

    dry_run: bool = False
    """List every step with its state (done, to run, resume, stale) and run nothing."""
    report_only: bool = False
    """Write the report from the steps finished so far and run nothing else (e.g. a long study stopped
    with Ctrl-C between sessions: the report shows what has run; the same command without this flag
    resumes)."""
    only: str | None = None
    """Run only these variants (comma-separated names) besides the base model's evaluation, e.g. a grid
    too long for one machine or session run in parts; the part's report covers the base and these variants,
    in OUT/parts/<names>/report beside the part's saved study.yaml."""


def restricted(cfg: StudyRunConfig) -> StudyRunConfig:
    """``cfg`` with only the variants named in ``cfg.only`` (in the study's order), and its averaging
    restricted to them; an unknown name is an error that lists the study's variants."""
    if not cfg.only:
        return cfg
    names = [n.strip() for n in cfg.only.split(",") if n.strip()]
    known = [v.name for v in cfg.variants]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"--only: unknown variant(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"the study's variants are: {', '.join(known)}")
    variants = [v for v in cfg.variants if v.name in names]
    averaging = cfg.averaging
    if averaging.variants is not None:
        averaging = averaging.model_copy(update={"variants": [n for n in averaging.variants if n in names]})
    return cfg.model_copy(update={"variants": variants, "averaging": averaging})


def layout_of(cfg: StudyConfig, out: Path) -> StudyLayout:
    """The study's layout; a run restricted by ``--only`` (``cfg`` already :func:`restricted`) is a part,
    whose report and saved config are its own, so one part does not replace another's."""
    only = getattr(cfg, "only", None)
    return StudyLayout(out, StudyLayout.part_name([v.name for v in cfg.variants]) if only else None)


def _state(step_dir: Path) -> dict[str, Any] | None:
    path = step_dir / STATE
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Prints:
    """The fingerprints of the steps planned so far, and those an older medtune would have computed."""

    out: Path
    current: dict[str, str] = field(default_factory=dict)
    legacy: dict[str, str] = field(default_factory=dict)

    def of(self, step: S.Step) -> tuple[dict[str, Any], str]:
        """(basis, fingerprint) of ``step``, whose input steps were planned before it."""
        basis = step.basis(self.current, self.out)
        self.current[step.name] = fingerprint.digest(basis)
        self.legacy[step.name] = step.legacy_fingerprint(self.legacy)
        return basis, self.current[step.name]

    def status(self, step: S.Step) -> str:
        """done | run | resume | stale (its inputs or settings changed since it ran)."""
        return status(step, self.out, self.current[step.name], self.legacy[step.name])


def status(step: S.Step, out: Path, fp: str, legacy: str | None = None) -> str:
    """done | run | resume | stale (its inputs or settings changed since it ran); ``legacy`` is the
    fingerprint an older medtune, whose state files have no basis, would have written."""
    st = _state(out / step.name)
    if st is None:
        return "run"
    if st["fingerprint"] != fp and ("basis" in st or st["fingerprint"] != legacy):
        return "stale"
    if st["state"] == "done":
        return "done"
    return "resume" if step.kind in ("train", "sweep") else "run"


def stale_reason(step: S.Step, out: Path, basis: dict[str, Any]) -> str:
    """Why a stale step runs again: the settings that changed since it ran (from the basis kept in its
    state), or the input steps that changed."""
    return fingerprint.what_changed((_state(out / step.name) or {}).get("basis"), basis)


def _upgrade_state(step_dir: Path, fp: str, basis: dict[str, Any]) -> None:
    """Give a finished step's state file from an older medtune this fingerprint and its basis."""
    st = _state(step_dir)
    if st is not None and "basis" not in st:
        atomic.write_json(step_dir / STATE, {**st, "fingerprint": fp, "basis": basis})


def _launch(step: S.Step, out: Path, launcher: list[str], config: Any, extra: list[str] | None = None) -> None:
    """Run a step's stage as ``LAUNCHER -m medtune KIND STEP_DIR/KIND.yaml`` (accelerate launch: one process
    per GPU), its config written next to its outputs first."""
    path = out / step.name / f"{step.kind}.yaml"
    atomic.write_text(path, dump_config(config))
    cmd = [*launcher, "-m", "medtune", step.kind, str(path), *(extra or [])]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise MedtuneError(f"{step.name}: the {step.kind} command failed: {' '.join(cmd)}")


def _run_train(step: S.Step, out: Path, cfg: StudyConfig, resume: bool) -> None:
    tcfg = step.config.model_copy(update={"resume": resume})
    if cfg.train_launcher:
        _launch(step, out, cfg.train_launcher, tcfg, ["--resume"] if resume else [])
        return
    from medtune.train.run import train

    train(tcfg)


def _execute(step: S.Step, out: Path, cfg: StudyConfig, basis: dict[str, Any], state: str) -> None:
    step_dir = out / step.name
    if state == "stale" and step.kind != "sweep":  # a sweep reuses the points its new config still asks for
        shutil.rmtree(step_dir)
    started = time.time()
    fp = fingerprint.digest(basis)
    atomic.write_json(step_dir / STATE, {"step": step.name, "fingerprint": fp, "state": "started",
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "basis": basis})
    if step.kind == "train":
        from medtune.train import checkpoint

        _run_train(step, out, cfg, resume=state == "resume" and checkpoint.latest(step_dir) is not None)
    elif step.kind == "eval" and cfg.eval_launcher:
        _launch(step, out, cfg.eval_launcher, step.config)
    elif step.kind == "eval":
        from medtune.evaluate.run import evaluate

        evaluate(step.config)
    elif step.kind == "sweep":
        from medtune.merge.sweep import sweep

        atomic.write_text(step_dir / "config.yaml", dump_config(step.config))
        sweep(step.config)
    elif step.kind == "merge":
        from medtune.merge.run import merge

        merge(step.config)
        atomic.write_text(step_dir / "config.yaml", dump_config(step.config))
    else:
        from medtune.report.build import write_report
        from medtune.study.results import gather

        layout = layout_of(cfg, out)
        write_report(gather(cfg, layout), layout.report_dir())
    atomic.write_json(step_dir / STATE, {"step": step.name, "fingerprint": fp, "state": "done",
                                         "seconds": round(time.time() - started, 1),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "basis": basis})


def _steps(cfg: StudyConfig, out: Path) -> list[S.Step | str]:
    """The whole plan as far as it is known: steps, and for unknown ones a line saying what they wait for."""
    plan: list[S.Step | str] = []
    compared: list[S.Step] = []  # points reported for comparison only: after everything else
    for step in S.static_plan(cfg, out):
        plan.append(step)
        if step.kind == "sweep":
            variant = next(v for v in cfg.variants if f"sweep/{v.name}" == step.name)
            point = S.selected_point(out, variant.name)
            if point is None:
                plan.append(f"merge/{variant.name}, eval/{variant.name}-averaged: wait for {step.name}'s selected alpha")
            else:
                plan += S.averaged_plan(cfg, out, variant, point)
                compared += S.compared_plan(cfg, out, variant, point)
    plan += compared
    report_deps = [s.name for s in plan if isinstance(s, S.Step)]
    plan.append(S.Step(layout_of(cfg, out).report_step(), "report", None, report_deps))
    return plan


def study(cfg: StudyRunConfig) -> Path:
    """Run (or list, or report) the study in its directory, ``cfg.out`` resolved first."""
    if cfg.out_base == "study_file":
        cfg = cfg.model_copy(update={"out": str(cfg.out_dir()), "out_base": "cwd"})
    return _study(cfg)


@outdir.writes_into("study", lock="study")
def _study(cfg: StudyRunConfig) -> Path:
    from rich.console import Console
    from rich.rule import Rule

    console = Console()
    out = Path(cfg.out)
    cfg = restricted(cfg)
    if cfg.dry_run:
        _print_plan(console, cfg, out)
    missing = _missing_inputs(S.static_plan(cfg, out))
    if missing:  # before anything runs: not after an hour of training, when its evaluation starts
        raise ConfigError("the study reads data that is not there:\n  " + "\n  ".join(missing))
    if cfg.dry_run:
        return out
    if cfg.report_only:
        return _report_only(console, cfg, out)
    study_file = layout_of(cfg, out).study_file()
    atomic.write_text(study_file, cfg.saved_file(at=study_file.parent))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load says nothing in a study
    prints = Prints(out)
    done: set[str] = set()
    timings: list[tuple[str, str, float]] = []
    while True:  # the plan grows as sweeps select their alphas
        plan = _steps(cfg, out)
        pending = [s for s in plan if isinstance(s, S.Step) and s.name not in done]
        if not pending:
            break
        step = pending[0]
        # steps still unknown (a merge and its eval per unfinished sweep) count as two each
        total = sum(1 if isinstance(s, S.Step) else 2 for s in plan)
        counter = f"[{len(done) + 1}/{total}]"
        basis, fp = prints.of(step)
        state = prints.status(step)
        if step.kind == "report" and state == "done":
            state = "run"  # under a second, and it picks up the newest report layout
        if state == "done":
            _upgrade_state(out / step.name, fp, basis)
            console.print(f"[green]✓[/] {counter} {step.name} [dim](done, skipped)[/]")
        else:
            what = {"run": "running", "resume": "resuming", "stale": "running again"}[state]
            notes = [stale_reason(step, out, basis)] if state == "stale" else []
            notes += [step.note] if step.note else []
            console.print(Rule(" · ".join([f"{counter} {step.name} — {what}", *notes]), align="left"))
            t0 = time.perf_counter()
            try:
                _execute(step, out, cfg, basis, state)
            except KeyboardInterrupt:
                console.print(f"\n[yellow]interrupted during {step.name}[/]: run the same command again to resume "
                              "(finished steps are kept; training continues from its last checkpoint)")
                raise SystemExit(130) from None
            timings.append((step.name, state, time.perf_counter() - t0))
        done.add(step.name)
    for name, state, secs in timings:
        console.print(f"  {name:<32} {state:<7} {secs:8.1f} s")
    _print_outcome(console, cfg, out)
    return out


def _report_only(console: Any, cfg: StudyConfig, out: Path) -> Path:
    """The report of the finished steps that are current; nothing runs, and no step's state changes. A
    finished step whose settings or inputs changed since it ran (stale) is named and left out of the report."""
    from medtune.report.build import write_report
    from medtune.study.results import gather

    layout = layout_of(cfg, out)
    if not layout.study_files():
        raise ConfigError(f"{out}: the study has not run yet, so there is nothing to report")
    prints = Prints(out)
    states: dict[str, str] = {}
    for step in _steps(cfg, out):
        if isinstance(step, S.Step) and step.kind != "report":
            prints.of(step)
            states[step.name] = prints.status(step)
    current = [n for n, st in states.items() if st == "done"]
    stale = [n for n, st in states.items() if st == "stale"]
    rdir = write_report(gather(cfg, layout, stale), layout.report_dir())
    console.print(f"report of {len(current)} finished and current step(s) of {len(states)} known: "
                  f"{(rdir / 'report.html').resolve()}"
                  + ("" if len(current) == len(states) else "  (the study is not complete: run it again to resume)"))
    if stale:
        console.print(f"[yellow]left out of the report: {len(stale)} stale step(s)[/], whose settings or inputs changed "
                      f"since they ran: {', '.join(stale)}")
    return out


def _print_outcome(console: Any, cfg: StudyConfig, out: Path) -> None:
    """Which model to ship, how to talk to it, and where the report is."""
    import shlex

    from medtune.report.build import columns, model_row
    from medtune.study.results import gather, model_dir_of

    layout = layout_of(cfg, out)
    results = gather(cfg, layout)
    ship = results.ship
    row = next((r for r in results.rows if ship is not None and r.label == ship.row), None)
    if ship is not None and row is not None:
        shown = model_row(row, columns(results.tasks, results.groups, results.listed))
        med, gen = shown["medical_avg"], shown["general_avg"]
        console.print(f"[bold]ship:[/] {row.label} — " + (f"test medical avg {100 * med['value']:.1f}" if med else "")
                      + (f", general avg {100 * gen['value']:.1f}" if gen else "")
                      + f" (chosen on validation: {ship.rule.describe()})")
        chat = f"medtune chat --model.spec {shlex.quote(cfg.model.spec)}"
        model_dir = model_dir_of(row, layout)
        if model_dir is not None and (model_dir / "adapter_config.json").is_file():
            chat += f" --adapter {shlex.quote(str(model_dir))}"
        elif model_dir is not None:  # full fine-tuning or a full merge: the directory is the whole model
            chat = f"medtune chat --model.spec {shlex.quote(str(model_dir))}"
        console.print(f"[bold]ask it something:[/] {chat}")
    _print_changes(console, cfg, results)
    console.print(f"[bold]report:[/] {(layout.report_dir() / 'report.html').resolve()}  (and report.md beside it)")


def _score_text(tasks: list[str], value: float) -> str:
    """A selection score as a person reads it: accuracy in %, or the perplexity of a lone perplexity task."""
    task = TASKS.get(tasks[0]) if len(tasks) == 1 else None  # a group is not a task
    if task is not None and task.kind == "ppl":
        return f"perplexity {1 / value:.2f}" if value > 0 else "perplexity ∞"
    return f"{100 * value:.1f}"


def _print_changes(console: Any, cfg: StudyConfig, results: Any) -> None:
    """Each model's paired change vs base (test splits) with its verdict, and each sweep's trade-off (validation)."""
    from rich.table import Table

    from medtune.study.outcome import changes, priors, tradeoffs

    found = changes(results)
    if found:
        table = Table(title="change vs the base model, paired on the same test items (95 % interval)", title_justify="left")
        for col in ("model", "task", "n", "change", "reading"):
            table.add_column(col)
        for c in found:
            color = "green" if c.verdict() == "measured gain" else "red" if c.verdict() == "measured loss" else "dim"
            table.add_row(c.model, c.task, str(c.n), c.text(), f"[{color}]{c.verdict()}[/]")
        console.print(table)
    for p in priors(results):
        console.print(f"[yellow]note:[/] {p.text()}")
    av = cfg.averaging
    points = tradeoffs(results)
    if points:
        table = Table(title=f"averaging trade-off on validation (medical: {', '.join(av.medical_tasks)}; general: "
                            f"{', '.join(av.general_tasks)})", title_justify="left")
        for col in ("variant", "point", "medical", "general", ""):
            table.add_column(col)
        for t in points:
            table.add_row(t.variant, t.label, _score_text(av.medical_tasks, t.medical), _score_text(av.general_tasks, t.general),
                          "[bold]selected[/]" if t.selected else "")
        console.print(table)


def _missing_inputs(plan: list[S.Step]) -> list[str]:
    """One line per local data path some step reads that does not exist, naming the steps."""
    from medtune.data.registry import resolve_path

    found: dict[str, list[str]] = {}
    for step in plan:
        for what, src, root in step.inputs():
            try:
                resolve_path(src, root)
            except MedtuneError as err:
                found.setdefault(str(err), []).append(f"{step.name} ({what})")
    return [f"{err} (read by {', '.join(who)})" for err, who in found.items()]


def _print_plan(console: Any, cfg: StudyConfig, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"study {cfg.name} → {out}", title_justify="left")
    for col in ("step", "state", "note"):
        table.add_column(col)
    prints = Prints(out)
    colors = {"done": "green", "run": "yellow", "resume": "cyan", "stale": "magenta", "wait": "dim"}
    plan = _steps(cfg, out)
    waiting = any(isinstance(i, str) for i in plan)
    for item in plan:
        if isinstance(item, str):
            table.add_row(item.split(":")[0], f"[{colors['wait']}]wait[/]", item.split(": ", 1)[1])
            continue
        if item.kind == "report" and waiting:  # its inputs are not all known yet
            table.add_row(item.name, f"[{colors['wait']}]wait[/]", "after the steps above")
            continue
        basis, _ = prints.of(item)
        state = prints.status(item)
        note = item.note
        if state == "stale":
            note = " · ".join([stale_reason(item, out, basis), *([note] if note else [])])
        if state == "resume" and item.kind == "train":
            from medtune.train import checkpoint

            latest = checkpoint.latest(out / item.name)
            note = f"from {latest.name}" if latest else "no checkpoint yet: from the start"
        table.add_row(item.name, f"[{colors[state]}]{state}[/]", note)
    console.print(table)
