"""The ``medtune`` command line: one table from command name to stage function.

Each command takes an optional CONFIG.yaml plus one option per config field (generated from the
pydantic model, so the field's docstring is the ``--help`` text). Errors that medtune raises on
purpose, and a full or read-only disk (:data:`DISK_ERRORS`), are printed as one line without a
traceback and exit with status 2; ``MEDTUNE_DEBUG=1`` shows the disk error's traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from medtune.cli_options import absolute_paths, options_for, overrides_from
from medtune.errors import MedtuneError


@dataclass(frozen=True)
class Command:
    """A CLI command: its config model and the function that runs it (imported lazily)."""

    config: Callable[[], type[BaseModel]]
    run: Callable[[], Callable[[Any], Any]]
    help: str


def _lazy(module: str, name: str) -> Callable[[], Any]:
    def get() -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)

    return get


COMMANDS: dict[str, Command] = {
    "data stats": Command(
        _lazy("medtune.data.config", "DataConfig"),
        _lazy("medtune.data.build", "stats_command"),
        "Per-source item and token counts, labels, leakage and the realised replay mix.",
    ),
    "data build": Command(
        _lazy("medtune.data.config", "DataConfig"),
        _lazy("medtune.data.build", "build_command"),
        "Build the packed training set (leakage guard, replay mix, packing) into an artifact directory.",
    ),
    "model info": Command(
        _lazy("medtune.model_info", "ModelInfoConfig"),
        _lazy("medtune.model_info", "model_info"),
        "Resolve a model spec (converting GGUF once), print its architecture and size, optionally generate.",
    ),
    "eval": Command(
        _lazy("medtune.evaluate.run", "EvalConfig"),
        _lazy("medtune.evaluate.run", "evaluate"),
        "Score a model (optionally with a LoRA adapter) on medical and general tasks; writes results.json.",
    ),
    "compare": Command(
        _lazy("medtune.report.compare", "CompareConfig"),
        _lazy("medtune.report.compare", "compare_command"),
        "Paired changes of one evaluation against another (accuracy, macro-F1, perplexity), with 95 % intervals.",
    ),
    "power": Command(
        _lazy("medtune.evaluate.power", "PowerConfig"),
        _lazy("medtune.evaluate.power", "power_table"),
        "Size the test sets: the paired accuracy change each task's n detects, from a pilot's base and tuned evals.",
    ),
    "train": Command(
        _lazy("medtune.train.config", "TrainConfig"),
        _lazy("medtune.train.run", "train"),
        "Continued pretraining (LoRA or full) on medical text with optional replay; resumable.",
    ),
    "merge": Command(
        _lazy("medtune.merge.run", "MergeConfig"),
        _lazy("medtune.merge.run", "merge"),
        "Average a base model with tuned models (WiSE-FT interpolation, HMA, model soups); writes mergekit YAML too.",
    ),
    "sweep": Command(
        _lazy("medtune.merge.sweep", "SweepConfig"),
        _lazy("medtune.merge.sweep", "sweep"),
        "Evaluate an α grid (and HMA ratios) between base and tuned; mark the Pareto front, select, plot.",
    ),
    "study": Command(
        _lazy("medtune.study.run", "StudyRunConfig"),
        _lazy("medtune.study.run", "study"),
        "Run a whole study from one YAML (base eval, training variants, eval, averaging sweeps, report); resumable.",
    ),
    "chat": Command(
        _lazy("medtune.chat", "ChatConfig"),
        _lazy("medtune.chat", "chat"),
        "Ask a base, tuned (--adapter) or averaged (--alpha) model questions; the answer streams as it is generated.",
    ),
    "demo": Command(
        _lazy("medtune.demo", "DemoConfig"),
        _lazy("medtune.demo", "run_demo"),
        "Run the demo end to end on the embedded model and the bundled demo sample.",
    ),
}
"""Command name (with group) -> stage. ``medtune --help`` lists these."""


def _make_command(name: str, spec: Command) -> click.Command:
    model = spec.config()
    options, dest, yaml_only = options_for(model)
    epilog = ""
    if yaml_only:
        epilog = "Set in CONFIG only (lists and mappings):\n\n" + "\n\n".join(f"  {line}" for line in yaml_only)

    def callback(config: str | None, **params: Any) -> None:
        from medtune.config import load_config, validate

        overrides = absolute_paths(model, overrides_from(params, dest))
        if config:
            cfg = load_config(model, config, overrides)
            cfg_dir = Path(config).resolve().parent
        else:
            data: dict[str, Any] = {}
            from medtune.config import set_dotted

            for key, value in overrides.items():
                set_dotted(data, key, value)
            cfg = validate(model, data, "command line")
            cfg_dir = Path.cwd()
        if getattr(cfg, "progress", True) is False:
            _quiet_loading()
        spec.run()(_with_base(cfg, cfg_dir))

    params = [click.Argument(["config"], required=False, type=click.Path(dir_okay=False))] + options
    return click.Command(name.split()[-1], params=params, callback=callback, help=spec.help, epilog=epilog,
                         context_settings={"max_content_width": 110})


def _quiet_loading() -> None:
    """Under --no-progress, also silence the bars transformers and huggingface_hub draw themselves
    ("Loading weights", downloads): --no-progress is for logs and pipes, where they are noise."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # for processes launched from here (train_launcher)
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def _with_base(cfg: BaseModel, base: Path) -> BaseModel:
    """Give configs that resolve relative paths the directory of their YAML file (the current directory
    without one): :meth:`medtune.config.ConfigFile.resolve`, the one relative-path rule."""
    if "base_dir" in type(cfg).model_fields and getattr(cfg, "base_dir") is None:
        cfg.base_dir = str(base)
    return cfg


class _LazyGroup(click.Group):
    """Builds command options only when a command is used (imports pydantic models, not torch)."""

    def __init__(self, *args: Any, prefix: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prefix = prefix

    def _children(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for full, spec in COMMANDS.items():
            if not full.startswith(self.prefix):
                continue
            rest = full[len(self.prefix):].split()
            out.setdefault(rest[0], spec.help if len(rest) == 1 else f"{rest[0]} commands")
        return out

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._children())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        full = (self.prefix + cmd_name).strip()
        if full in COMMANDS:
            return _make_command(full, COMMANDS[full])
        if cmd_name in self._children():
            return _LazyGroup(cmd_name, prefix=f"{full} ", help=self._children()[cmd_name])
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = list(self._children().items())
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="medtune")
def app() -> None:
    """medtune: adapt LLaMA-family models to medicine without losing what they knew."""


def main(argv: list[str] | None = None) -> None:
    import warnings

    # peft reads a property that transformers 5 deprecated; nothing a medtune user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    _log_width()
    try:
        app.main(args=argv, prog_name="medtune", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except MedtuneError as exc:
        _error(str(exc))
    except OSError as exc:
        message = disk_error(exc)
        if message is None or os.environ.get("MEDTUNE_DEBUG"):
            raise
        _error(message)


LOG_COLUMNS = 200
"""Width of rich's tables when the output is a file or a pipe (a log): rich falls back to 80 columns there,
which cuts the study's tables; a terminal keeps its own width."""


def _log_width() -> None:
    """Lay tables out at least LOG_COLUMNS wide when standard output is not a terminal (COLUMNS is often
    exported as the terminal's width, which says nothing about a log file)."""
    if not sys.stdout.isatty():
        given = os.environ.get("COLUMNS", "")
        os.environ["COLUMNS"] = str(max(int(given) if given.isdigit() else 0, LOG_COLUMNS))


DISK_ERRORS = {errno.ENOSPC: "cannot write", errno.EDQUOT: "cannot write", errno.EFBIG: "cannot write",
               errno.EROFS: "cannot write", errno.EACCES: "cannot access", errno.EPERM: "cannot access"}
"""OS errors that say the disk is full or not writable by this user -- a fact about the machine, not a
defect of medtune or of its input -- and how their message begins. Any other OSError keeps its traceback."""


def disk_error(exc: OSError) -> str | None:
    """``cannot write PATH: No space left on device`` for a disk or permission error, else None."""
    if exc.errno not in DISK_ERRORS:
        return None
    where = f" {exc.filename}" if exc.filename is not None else ""
    return f"{DISK_ERRORS[exc.errno]}{where}: {exc.strerror or os.strerror(exc.errno)}"


def _error(message: str) -> None:
    """Print one ``error:`` line on stderr and exit with status 2."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False).print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
