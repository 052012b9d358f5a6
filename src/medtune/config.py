"""Typed configuration: pydantic models loaded from YAML and validated once, at the edge.

Every stage's settings subclass :class:`StrictModel`: unknown keys are errors, and a field's
docstring is its documentation and its CLI ``--help`` text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from medtune.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: forbids unknown keys, validates assignments, docstrings are help, and
    refuses non-finite numbers (``learning_rate: .inf`` or ``.nan`` is an error, not a ruined run)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True, frozen=False,
                              allow_inf_nan=False)


def split_names(value: Any) -> Any:
    """``"a, b"`` -> ``["a", "b"]``: how a list of names is written on the command line (the CLI parses its
    options with this; a config file written before task lists were lists is read the same way)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Names = Annotated[list[str], BeforeValidator(split_names)]
"""A list of names (tasks, variants): a list in YAML and in the model; ``--option a,b`` on the command line."""


@dataclass(frozen=True)
class FileRelative:
    """Marks a path field that the one relative-path rule applies to (:meth:`ConfigFile.resolve`)."""


RelativePath = Annotated[str, FileRelative()]
"""A path that, when relative, is relative to the config file that names it (on the command line: to the
current directory, see :func:`medtune.cli_options.absolute_paths`)."""


class ConfigFile(StrictModel):
    """A config read from a file: relative paths in it resolve against that file's directory."""

    base_dir: str | None = Field(None, json_schema_extra={"cli": False})
    """Directory of the config file (set automatically; the current directory without a file): relative
    data roots are relative to it."""

    def resolve(self, path: str) -> Path:
        """The one relative-path rule: ``path`` as named in this config's file, made absolute against the
        file's directory (the command line made its own paths absolute against the current directory)."""
        return (Path(self.base_dir or ".") / Path(path).expanduser()).resolve()


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: key.path: message (allowed: ...)``."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(err, e["loc"][:-1])
            if parent is not None:
                msg += f" (allowed keys: {', '.join(parent)})"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected")
            msg = f"invalid value {e.get('input')!r} (allowed: {expected})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def _model_at(err: ValidationError, loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model found at ``loc`` inside the model that failed, if we can tell."""
    model = _VALIDATING.get(err.title)
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return list(model.model_fields) if model is not None else None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


_VALIDATING: dict[str, type[BaseModel]] = {}


def validate(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` into ``model`` or raise :class:`ConfigError` naming each key path."""
    _VALIDATING[model.__name__] = model
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', err)}") from None


def load_config(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    """Load ``path`` as ``model``, applying dotted-key ``overrides`` (``{"train.lr": 1e-4}``) first."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return validate(model, data, str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{key}' is not a mapping")
    node[last] = value


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, for provenance next to an artifact."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


class ModelConfig(StrictModel):
    """Which model to load, and how safely."""

    spec: str = "smollm2-135m"
    """Model: built-in name (smollm2-135m), local HF directory, local .gguf file, or Hub id (org/name)."""
    trust_remote_code: bool = False
    """Run Python code shipped with a Hub model. Off unless you trust the model's authors."""
    allow_pickle: bool = False
    """Allow pickled weights (.bin/.pt). Off by default: unpickling can run arbitrary code."""
    allow_other_base: bool = False
    """Apply a LoRA adapter on this model although the adapter's provenance says it was trained on a base
    with other weights (warned about instead of refused): its deltas were learnt for those weights."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", json_schema_extra={"cli_short": "--dtype"})
    """Weights dtype: auto = fp32 on CPU; on a GPU bf16 (fp16 where it has no native bf16) for frozen weights
    (inference, averaging, the LoRA base), fp32 master weights under mixed precision for full fine-tuning.
    float32 on a GPU scores as lm-eval does in fp32 (docs/evaluation.md)."""
    attn_implementation: str | None = None
    """transformers' attention implementation (eager, sdpa, flash_attention_2, ...); None: the model's default."""
