"""One config type per concept: a setting a stage and the study share is declared once, task lists are
lists, and relative paths resolve by one rule (against the file that names them; on the command line,
against the current directory)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import medtune
from medtune.cli import main
from medtune.config import StrictModel, load_config

ALLOWED = {
    "out": "each stage writes its own directory (runs/eval, runs/sweep, ...): one name, one default per stage",
    "limit": "eval: test items per task (default: all); sweep / averaging: validation items per sweep point "
             "(default 200): the budgets of two stages",
    "data_root": "training sources default to the data config's own directory, benchmark tasks to the shared "
                 "benchmark layout (../shared/data)",
    "name": "a report title, a variant's name, a source's name",
    "tuned": "merge averages several tuned models (a list), a sweep interpolates towards one",
    "alpha": "LoRA's scaling numerator, merge's weight on the tuned model, chat's weight: three quantities",
    "method": "training method (lora / full) and averaging method (linear, ties, ...)",
    "chat_template": "data: a Jinja template for chat training sources; eval: whether to wrap prompts; chat: on",
    "max_new_tokens": "an answer letter (eval, 16), a model-info sample (32), a chat answer (256)",
    "adapter": "a source's reader (qa, pubmedqa, text) vs a LoRA adapter directory",
    "train": "the study's shared training settings (a mapping) vs the data config's training sources (a list)",
    "variants": "the study's variants (their definitions) vs averaging's names of the variants to sweep",
    "base": "merge and sweep: the base model (a model spec); power: the base model's evaluation directory",
    "tasks": "eval: the tasks scored (default: the study's suite); power: a subset of the evaluations' tasks "
             "(default: all they share)",
    "general_share": "a variant's override (None: the study data's share) of the data config's share",
}
"""Field names declared by two configs with another type or default, and why each is right as it is."""


def _configs() -> list[type[StrictModel]]:
    """Every StrictModel config in medtune (every module imported, subclasses found recursively)."""
    for info in pkgutil.walk_packages(medtune.__path__, "medtune."):
        if "demo_data" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found, todo = [], list(StrictModel.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in found and cls.__module__.startswith("medtune."):
            found.append(cls)
        todo += cls.__subclasses__()
    return found


def _declared(cls: type[StrictModel]) -> dict[str, tuple[str, str]]:
    """The fields ``cls`` declares itself (not inherited): name -> (type, default) as text."""
    own = cls.__dict__.get("__annotations__", {})
    out = {}
    for name, field in cls.model_fields.items():
        if name in own:
            kind = f"{field.annotation!r} {sorted(map(repr, field.metadata))}"
            out[name] = (kind, repr(field.get_default(call_default_factory=True)))
    return out


def test_no_config_field_is_declared_twice_with_another_type_or_default():
    """A field name two configs declare has one type and one default there, unless the allow-list says why not."""
    seen: dict[str, dict[tuple[str, str], list[str]]] = {}
    for cls in _configs():
        for name, shape in _declared(cls).items():
            seen.setdefault(name, {}).setdefault(shape, []).append(f"{cls.__module__}.{cls.__name__}")
    drifted = {name: shapes for name, shapes in seen.items() if len(shapes) > 1 and name not in ALLOWED}
    assert not drifted, "\n".join(f"{name}: " + "; ".join(f"{owners} -> {shape}" for shape, owners in shapes.items())
                                  for name, shapes in drifted.items())
    stale = {name for name in ALLOWED if len(seen.get(name, {})) < 2}
    assert not stale, f"allowed but no longer declared differently (remove from ALLOWED): {stale}"


def test_the_study_averaging_and_the_sweep_share_one_settings_type():
    """The study's averaging section is the sweep's settings (one type), not a copy of their fields."""
    from medtune.merge.sweep import SweepConfig, SweepSettings
    from medtune.study.config import AveragingConfig, StudyEvalConfig
    from medtune.evaluate.run import EvalConfig
    from medtune.evaluate.settings import TaskSettings

    assert issubclass(AveragingConfig, SweepSettings) and issubclass(SweepConfig, SweepSettings)
    assert issubclass(StudyEvalConfig, TaskSettings) and issubclass(EvalConfig, TaskSettings)
    assert AveragingConfig().alphas == SweepConfig().alphas
    assert AveragingConfig().general_tasks == SweepConfig().general_tasks == ["arc_easy"]


@pytest.mark.parametrize("model", ["medtune.evaluate.run:EvalConfig", "medtune.merge.sweep:SweepConfig",
                                   "medtune.merge.run:MergeConfig", "medtune.data.build:DataConfig"])
def test_a_data_root_in_a_config_file_is_relative_to_that_file(tmp_path, monkeypatch, model):
    """data_root written in a YAML file resolves against the file's directory, whatever the current directory."""
    module, name = model.split(":")
    cls = getattr(importlib.import_module(module), name)
    (tmp_path / "conf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    extra: dict[str, Any] = {"tuned": ["t"]} if name == "MergeConfig" else {}
    (tmp_path / "conf" / "c.yaml").write_text(yaml.safe_dump({"data_root": "bench", **extra}))
    monkeypatch.chdir(tmp_path / "elsewhere")
    got = _run_cli(monkeypatch, {"EvalConfig": "eval", "SweepConfig": "sweep", "MergeConfig": "merge",
                                 "DataConfig": "data build"}[name], [str(tmp_path / "conf" / "c.yaml")])
    assert isinstance(got, cls)
    assert got.root() == (tmp_path / "conf" / "bench").resolve()


def test_a_data_root_on_the_command_line_is_relative_to_the_current_directory(tmp_path, monkeypatch):
    """--data-root given on the command line resolves against the current directory, also next to a config file."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "e.yaml").write_text(yaml.safe_dump({"tasks": ["pubmedqa"]}))
    monkeypatch.chdir(tmp_path)
    got = _run_cli(monkeypatch, "eval", ["conf/e.yaml", "--data-root", "bench"])
    assert got.root() == (tmp_path / "bench").resolve()
    got = _run_cli(monkeypatch, "eval", ["--data-root", "bench"])
    assert got.root() == (tmp_path / "bench").resolve()


def test_a_study_resolves_its_data_roots_against_the_study_file(tmp_path, monkeypatch):
    """The study's data roots, and the eval and sweep configs it builds, point under the study file's directory."""
    from medtune.study.run import StudyRunConfig
    from medtune.study.steps import static_plan

    cfg = load_config(StudyRunConfig, _any_study(), {"evaluation.data_root": "d", "data.data_root": "d"})
    cfg.base_dir = str(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    assert cfg.root(cfg.evaluation.data_root) == (tmp_path / "d").resolve()
    for step in static_plan(cfg, tmp_path / "out"):
        if step.kind in ("eval", "sweep", "train"):
            assert step.data_root() == (tmp_path / "d").resolve(), step.name


def _any_study() -> Path:
    from medtune.demo import DEMO_STUDY, demo_data_dir

    return demo_data_dir() / DEMO_STUDY


def _run_cli(monkeypatch, command: str, args: list[str]) -> Any:
    """The config a command's stage function receives from ``medtune COMMAND ARGS`` (the stage is not run)."""
    from medtune import cli

    got: list[Any] = []
    spec = cli.COMMANDS[command]
    monkeypatch.setitem(cli.COMMANDS, command, cli.Command(spec.config, lambda: got.append, spec.help))
    main([*command.split(), *args])
    return got[0]


def test_the_command_line_parses_comma_separated_lists_into_lists(tmp_path, monkeypatch):
    """--tasks a,b (and every other list of names) reaches the config as a list, parsed once at the CLI edge."""
    monkeypatch.chdir(tmp_path)
    assert _run_cli(monkeypatch, "eval", ["--tasks", "pubmedqa, arc_easy"]).tasks == ["pubmedqa", "arc_easy"]
    sweep = _run_cli(monkeypatch, "sweep", ["--medical-tasks", "pubmedqa,medqa4", "--general-tasks", "arc_easy"])
    assert (sweep.medical_tasks, sweep.general_tasks) == (["pubmedqa", "medqa4"], ["arc_easy"])
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"tuned": ["a", "b"], "method": "soup_greedy"}))
    assert _run_cli(monkeypatch, "merge", ["m.yaml", "--heldout-tasks", "pubmedqa,medqa4"]).heldout_tasks == \
        ["pubmedqa", "medqa4"]
    study = _run_cli(monkeypatch, "study", [str(_any_study()), "--only", "lora"])
    assert study.only == ["lora"]


def test_task_lists_are_lists_in_every_config():
    """Task lists hold lists, in the stage configs and in the study; a comma string is read as the list it names."""
    from medtune.evaluate.run import EvalConfig
    from medtune.merge.run import MergeConfig
    from medtune.merge.sweep import SweepConfig

    assert EvalConfig(tasks="pubmedqa,arc_easy").tasks == ["pubmedqa", "arc_easy"]
    assert EvalConfig(tasks=["pubmedqa"]).task_names == ["pubmedqa"]
    assert SweepConfig(medical_tasks="pubmedqa").medical_tasks == ["pubmedqa"]
    assert MergeConfig(tuned=["t"]).heldout_tasks == ["pubmedqa", "arc_easy"]
    from medtune.errors import ConfigError
    from medtune.config import validate

    with pytest.raises(ConfigError, match="tasks: .*pubmed"):
        validate(EvalConfig, {"tasks": ["pubmed"]}, "cli")
    with pytest.raises(ConfigError, match="tasks: .*no task given"):
        validate(EvalConfig, {"tasks": []}, "cli")
