"""``medtune study STUDY.yaml``: base evaluation, training variants, their evaluation, the averaging
sweeps, the selected averaged models, and the report, resumably.

Each step writes into its own directory under the study directory and, next to its outputs, a
``.medtune-step.json`` with its fingerprint and state. A re-run skips every step whose state is
``done`` with the same fingerprint; a training step that was interrupted resumes from its newest
checkpoint; a step whose fingerprint changed (a setting it depends on changed) is run again. The
report is written anew on every run (it reads the other steps' results and takes under a second).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medtune import atomic, outdir
from medtune.config import Names
from medtune.errors import ConfigError, MedtuneError
from medtune.evaluate.tasks import TASKS
from medtune.study import fingerprint
from medtune.study import steps as S
from medtune.study.config import StudyConfig
from medtune.study.layout import StepState, StudyLayout
from medtune.study.plan import Waiting


class StudyRunConfig(StudyConfig):
    """A study file plus how to run it."""

    dry_run: bool = False
    """List every step with its state (done, to run, resume, stale) and run nothing."""
    report_only: bool = False
    """Write the report from the steps finished so far and run nothing else (e.g. a long study stopped
    with Ctrl-C between sessions: the report shows what has run; the same command without this flag
    resumes)."""
    only: Names | None = None
    """Run only these variants (on the command line: --only a,b) besides the base model's evaluation, e.g. a grid
    too long for one machine or session run in parts; the part's report covers the base and these variants,
    in OUT/parts/<names>/report beside the part's saved study.yaml."""


def restricted(cfg: StudyRunConfig) -> StudyRunConfig:
    """``cfg`` with only the variants named in ``cfg.only`` (in the study's order), and its averaging
    restricted to them; an unknown name is an error that lists the study's variants."""
    if cfg.only is None:
        return cfg
    names = cfg.only
    known = [v.name for v in cfg.variants]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"--only: unknown variant(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"the study's variants are: {', '.join(known)}")
    variants = [v for v in cfg.variants if v.name in names]
    averaging = cfg.averaging
    if averaging.variants is not None:
        averaging = averaging.model_copy(update={"variants": [n for n in averaging.variants if n in names]})
    search, elsewhere = averaging.search, []
    if search is not None and search.parents and search.parents[0] not in names:
        # the multi-parent search runs in its first parent's sweep: in that one's part, in no other
        averaging = averaging.model_copy(update={"search": None, "test_best_of": [
            k for k in averaging.test_best_of if k not in ("search", "grid")]})
    elif search is not None:  # the other parents' training, finished in their own parts, is read from there
        elsewhere = [p for p in search.parents if p not in names]
    return cfg.model_copy(update={"variants": variants, "averaging": averaging, "trained_elsewhere": elsewhere})


def layout_of(cfg: StudyConfig, out: Path) -> StudyLayout:
    """The study's layout; a run restricted by ``--only`` (``cfg`` already :func:`restricted`) is a part,
    whose report and saved config are its own, so one part does not replace another's."""
    only = getattr(cfg, "only", None)
    return StudyLayout(out, StudyLayout.part_name([v.name for v in cfg.variants]) if only else None)


@dataclass
class Prints:
    """The fingerprints of the steps planned so far, and those an older medtune would have computed."""

    layout: StudyLayout
    current: dict[str, str] = field(default_factory=dict)
    legacy: dict[str, str] = field(default_factory=dict)

    def of(self, step: S.Step) -> tuple[dict[str, Any], str]:
        """(basis, fingerprint) of ``step``, whose input steps were planned before it -- or, in a part (--only),
        ran in another part: a multi-parent search averages variants trained elsewhere (their finished state)."""
        for dep in step.deps:
            if dep not in self.current:
                st = StepState.load(self.layout.state_file(dep))
                self.current[dep] = self.legacy[dep] = st.fingerprint if st and st.state == "done" else f"missing:{dep}"
        basis = step.basis(self.current, self.layout.root)
        fp = fingerprint.digest(basis)
        st = StepState.load(self.layout.state_file(step.name))
        if st is not None and st.basis is not None and st.fingerprint != fp \
                and (st.basis == basis or fingerprint.only_new_defaults(step.config, st.basis, basis)):
            fp = st.fingerprint  # settings medtune added since the step ran, at their defaults: the same step
        self.current[step.name] = fp
        self.legacy[step.name] = step.legacy_fingerprint(self.legacy)
        return basis, fp

    def status(self, step: S.Step) -> str:
        """done | run | resume | stale (its inputs or settings changed since it ran) | wait (it needs a step of
        another part that has not finished)."""
        if self.missing(step):
            return "wait"
        return status(step, self.layout, self.current[step.name], self.legacy[step.name])

    def missing(self, step: S.Step) -> list[str]:
        """The steps ``step`` needs that are in no step of this run and have not finished in another part."""
        return [d for d in step.deps if self.current[d].startswith("missing:")]


def status(step: S.Step, layout: StudyLayout, fp: str, legacy: str | None = None) -> str:
    """done | run | resume | stale (its inputs or settings changed since it ran); ``legacy`` is the
    fingerprint an older medtune, whose state files have no basis, would have written."""
    st = StepState.load(layout.state_file(step.name))
    if st is None:
        return "run"
    if st.fingerprint != fp and (st.basis is not None or st.fingerprint != legacy):
        return "stale"
    if st.state == "done":
        return "done"
    return "resume" if S.step_kind(step.kind).resumes else "run"


def stale_reason(step: S.Step, layout: StudyLayout, basis: dict[str, Any]) -> str:
    """Why a stale step runs again: the settings that changed since it ran (from the basis kept in its
    state), or the input steps that changed."""
    st = StepState.load(layout.state_file(step.name))
    return fingerprint.what_changed(st.basis if st else None, basis)


def _upgrade_state(layout: StudyLayout, step: S.Step, fp: str, basis: dict[str, Any]) -> None:
    """Give a finished step's state file from an older medtune this fingerprint and its basis."""
    path = layout.state_file(step.name)
    st = StepState.load(path)
    if st is not None and st.basis is None:
        replace(st, fingerprint=fp, basis=basis).save(path)


def _execute(step: S.Step, out: Path, cfg: StudyConfig, basis: dict[str, Any], state: str, fp: str) -> None:
    layout = layout_of(cfg, out)
    kind = S.step_kind(step.kind)
    if state == "stale" and not kind.keeps_when_stale:
        shutil.rmtree(layout.step_dir(step.name))
    path = layout.state_file(step.name)
    earlier, sittings = _earlier_sittings(StepState.load(path), fp) if state == "resume" else (0.0, 1)
    started, stamp = time.time(), time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def so_far(phase: Literal["started", "done"] = "started", **kw: Any) -> StepState:
        return StepState(step.name, fp, phase, seconds=round(earlier + time.time() - started, 1),
                         sittings=sittings if sittings > 1 else None, basis=basis, **kw)

    so_far(started=stamp).save(path)
    with _heartbeat(lambda: so_far(started=stamp).save(path)):
        kind.run(step, cfg, layout, state == "resume")
    so_far("done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z")).save(path)


HEARTBEAT_S = 60.0
"""How often a running step's state file records its time so far (what an interrupted sitting counts)."""


def _earlier_sittings(st: StepState | None, fp: str) -> tuple[float, int]:
    """The time a resumed step already ran (its state file's, written while it ran under this fingerprint)
    and which sitting this one is."""
    if st is None or st.fingerprint != fp or st.state != "started":
        return 0.0, 1
    return st.seconds or 0.0, (st.sittings or 1) + 1


@contextlib.contextmanager
def _heartbeat(beat: Callable[[], None]) -> Iterator[None]:
    """Call ``beat`` every :data:`HEARTBEAT_S` seconds in a thread while the block runs. A thread and not a
    signal handler: a session's end may kill the process outright, and the last beat is what is left."""
    import threading

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                beat()
            except OSError:  # a full disk must not stop the step; the final record is written after it
                pass

    thread = threading.Thread(target=loop, name="medtune-step-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _plan(cfg: StudyConfig, out: Path) -> list[S.Step | Waiting]:
    """The whole plan as far as the sweeps have selected their points: steps, and the ones that wait."""
    return S.built_plan(cfg, layout_of(cfg, out))


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
    unreadable = _unreadable_inputs(S.static_plan(cfg, out))
    if unreadable:  # before anything runs: not after an hour of training, when its evaluation starts
        raise ConfigError("the study reads data that is not there or does not read:\n  " + "\n  ".join(unreadable))
    if cfg.dry_run:
        return out
    if cfg.report_only:
        return _report_only(console, cfg, out)
    layout = layout_of(cfg, out)
    study_file = layout.study_file()
    atomic.write_text(study_file, cfg.saved_file(at=study_file.parent))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load says nothing in a study
    prints = Prints(layout)
    done: set[str] = set()
    timings: list[tuple[str, str, float]] = []
    while True:  # the plan grows as sweeps select their alphas
        plan = _plan(cfg, out)
        pending = [s for s in plan if isinstance(s, S.Step) and s.name not in done]
        if not pending:
            break
        step = pending[0]
        # steps still unknown (a merge and its eval per unfinished sweep) count as the names they are listed by
        total = sum(1 if isinstance(s, S.Step) else len(s.names) for s in plan)
        counter = f"[{len(done) + 1}/{total}]"
        basis, fp = prints.of(step)
        state = prints.status(step)
        if state == "wait":
            raise ConfigError(f"{step.name} needs {', '.join(prints.missing(step))}, which this part (--only) does not "
                              "run and which has not finished: run the part with "
                              + ", ".join(d.split("/", 1)[1] for d in prints.missing(step)) + " first")
        if step.kind == "report" and state == "done":
            state = "run"  # under a second, and it picks up the newest report layout
        if state == "done":
            _upgrade_state(layout, step, fp, basis)
            console.print(f"[green]✓[/] {counter} {step.name} [dim](done, skipped)[/]")
        else:
            what = {"run": "running", "resume": "resuming", "stale": "running again"}[state]
            notes = [stale_reason(step, layout, basis)] if state == "stale" else []
            notes += [step.note] if step.note else []
            console.print(Rule(" · ".join([f"{counter} {step.name} — {what}", *notes]), align="left"))
            t0 = time.perf_counter()
            try:
                _execute(step, out, cfg, basis, state, fp)
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
    from medtune.study.gather import gather

    layout = layout_of(cfg, out)
    if not layout.study_files():
        raise ConfigError(f"{out}: the study has not run yet, so there is nothing to report")
    prints = Prints(layout)
    states: dict[str, str] = {}
    for step in _plan(cfg, out):
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
    from medtune.study.gather import gather, model_dir_of

    layout = layout_of(cfg, out)
    results = gather(cfg, layout)
    ship = results.ship
    row = next((r for r in results.rows if ship is not None and r.label == ship.row), None)
    if ship is not None and row is not None:
        shown = model_row(row, columns(results.tasks, results.groups, results.listed))
        med, gen = shown.medical_avg, shown.general_avg
        console.print(f"[bold]ship:[/] {row.label} — " + (f"test medical avg {100 * med.value:.1f}" if med else "")
                      + (f", general avg {100 * gen.value:.1f}" if gen else "")
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

    for reference, title in (("base", "the base model"), ("control", f"the general-text control ({cfg.control})")):
        found = changes(results, reference)
        if not found:
            continue
        table = Table(title=f"change vs {title}, paired on the same test items (95 % interval)", title_justify="left")
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


def _unreadable_inputs(plan: list[S.Step]) -> list[str]:
    """One line per data source some step reads that is not there or does not read, naming the steps.

    Each local source is read once here, as its step will read it (split, subjects, fold, limit), so that a
    wrong split, an unparsable row or a filter that selects nothing stops the study before it runs, not hours
    later when the step that reads it starts. Hub sources are only checked for their settings (reading them
    needs the network); a text source is read up to its first document (a replay source may be ~1B tokens).
    """
    from medtune.data.registry import HUB_ADAPTERS, TEXT_ADAPTERS, iter_source, load_source, no_items, resolve_path
    from medtune.data.rejects import Rejects

    found: dict[str, list[str]] = {}
    checked: dict[str, str | None] = {}
    for step in plan:
        skip_invalid = step.kind == "train" and bool(step.config.data.skip_invalid)  # type: ignore[union-attr]
        for what, src, root in step.inputs():
            key = f"{src.model_dump_json()}|{root}|{skip_invalid}"
            if key not in checked:
                checked[key] = None
                try:
                    path = resolve_path(src, root)
                    if src.adapter in TEXT_ADAPTERS and src.adapter not in HUB_ADAPTERS:
                        if next(iter(iter_source(src, root, Rejects(skip_invalid=skip_invalid))), None) is None:
                            raise no_items(src, path, 0)
                    elif src.adapter not in HUB_ADAPTERS:
                        load_source(src, root, Rejects(skip_invalid=skip_invalid))
                except MedtuneError as err:
                    checked[key] = str(err)
            if checked[key] is not None:
                found.setdefault(checked[key], []).append(f"{step.name} ({what})")  # type: ignore[arg-type]
    return [f"{err} (read by {', '.join(who)})" for err, who in found.items()]


def _print_plan(console: Any, cfg: StudyConfig, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"study {cfg.name} → {out}", title_justify="left")
    for col in ("step", "state", "note"):
        table.add_column(col)
    layout = layout_of(cfg, out)
    prints = Prints(layout)
    colors = {"done": "green", "run": "yellow", "resume": "cyan", "stale": "magenta", "wait": "dim"}
    plan = _plan(cfg, out)
    waiting = any(isinstance(i, Waiting) for i in plan)
    for item in plan:
        if isinstance(item, Waiting):
            table.add_row(", ".join(item.names), f"[{colors['wait']}]wait[/]", item.reason)
            continue
        if item.kind == "report" and waiting:  # its inputs are not all known yet
            table.add_row(item.name, f"[{colors['wait']}]wait[/]", "after the steps above")
            continue
        basis, _ = prints.of(item)
        state = prints.status(item)
        note = item.note
        if state == "wait":
            note = f"needs {', '.join(prints.missing(item))} from another part (not finished yet)"
        if state == "stale":
            note = " · ".join([stale_reason(item, layout, basis), *([note] if note else [])])
        if state == "resume" and item.kind == "train":
            from medtune.train import checkpoint

            latest = checkpoint.latest(layout.step_dir(item.name))
            note = f"from {latest.name}" if latest else "no checkpoint yet: from the start"
        table.add_row(item.name, f"[{colors[state]}]{state}[/]", note)
    console.print(table)
