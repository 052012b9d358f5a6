"""Build click options from a pydantic config model, so each field's docstring is its ``--help``.

Scalar fields (str, int, float, bool, Literal, optional versions of those) become options named by
their dotted path with dashes (``model.spec`` -> ``--model.spec``); a list of names
(:data:`medtune.config.Names`: tasks, variants) is an option too, ``--tasks a,b``, parsed into a list
here, at the edge; other lists and mappings are set in the YAML file only and are listed in the
command's help epilog. A relative path given as an option is relative to the current directory: it is
made absolute here (:func:`absolute_paths`), before the config file's own rule applies to the rest.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import click
from pydantic import BaseModel, BeforeValidator

from medtune.config import FileRelative, split_names

_SCALARS = (str, int, float, bool)


def _unwrap_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


class _NamesType(click.ParamType):
    """``a,b`` -> ``["a", "b"]``: a list of names on the command line."""

    name = "a,b"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return split_names(value)


NAMES = _NamesType()


def _metadata(field: Any, ann: Any) -> list[Any]:
    """The field's Annotated metadata, also where it sits inside an Optional (``Names | None``)."""
    inner = _unwrap_optional(ann)
    return [*field.metadata, *(typing.get_args(inner)[1:] if typing.get_origin(inner) is Annotated else ())]


def _is_names(field: Any, ann: Any) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is split_names for m in _metadata(field, ann))


def _click_type(ann: Any, field: Any = None) -> Any | None:
    if field is not None and _is_names(field, ann):
        return NAMES
    ann = _unwrap_optional(ann)
    if typing.get_origin(ann) is Literal:
        return click.Choice([str(v) for v in typing.get_args(ann)])
    if ann in _SCALARS:
        return ann
    return None


def _submodel(ann: Any) -> type[BaseModel] | None:
    ann = _unwrap_optional(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def walk_fields(model: type[BaseModel], prefix: str = ""):
    """Yield (dotted_name, FieldInfo, annotation) for every field, depth first."""
    for name, field in model.model_fields.items():
        dotted = prefix + name
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from walk_fields(sub, dotted + ".")
        else:
            yield dotted, field, field.annotation


def _describe(field: Any) -> str:
    text = " ".join((field.description or "").split())
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list) and all(isinstance(v, str) for v in default):
        default = ",".join(default) or None  # as the option is written
    if default is not None and not isinstance(default, BaseModel):
        text += f"  [default: {default}]"
    return text


def _short(field: Any, options: list[click.Option]) -> list[str]:
    """The field's short flag (``cli_short``, e.g. ``--dtype`` for ``--model.dtype``) unless an option
    already has it (a config with two models gives it to the first)."""
    short = (field.json_schema_extra or {}).get("cli_short")
    taken = {name for o in options for name in o.opts}
    return [short] if short and short not in taken else []


def options_for(model: type[BaseModel]) -> tuple[list[click.Option], dict[str, str], list[str]]:
    """Click options for the scalar fields; a map param-name -> dotted path; YAML-only field lines."""
    options: list[click.Option] = []
    dest: dict[str, str] = {}
    yaml_only: list[str] = []
    for dotted, field, ann in walk_fields(model):
        if (field.json_schema_extra or {}).get("cli") is False:
            continue
        ctype = _click_type(ann, field)
        flag = "--" + dotted.replace("_", "-")
        param = "cfg__" + dotted.replace(".", "__")
        if ctype is None:
            yaml_only.append(f"{dotted}: {_describe(field)}")
            continue
        dest[param] = dotted
        if _unwrap_optional(ann) is bool:
            options.append(click.Option([f"{flag}/--no-{flag[2:]}", param], default=None, help=_describe(field)))
        else:
            options.append(click.Option([flag, *_short(field, options), param], type=ctype, default=None,
                                        help=_describe(field)))
    return options, dest, yaml_only


def overrides_from(params: dict[str, Any], dest: dict[str, str]) -> dict[str, Any]:
    """The options the user actually gave, as dotted-path overrides."""
    return {dest[k]: v for k, v in params.items() if k in dest and v is not None}


def absolute_paths(model: type[BaseModel], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with every relative path of a :class:`~medtune.config.FileRelative` field made absolute
    against the current directory: a path typed on the command line means what it means in this shell, not
    relative to the config file given with it."""
    relative = {dotted for dotted, field, ann in walk_fields(model)
                if any(isinstance(m, FileRelative) for m in _metadata(field, ann))}
    return {k: str(Path.cwd() / Path(v).expanduser()) if k in relative and isinstance(v, str) else v
            for k, v in overrides.items()}
