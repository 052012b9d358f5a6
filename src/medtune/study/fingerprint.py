"""What a study step's fingerprint is made of, so that it means the same study wherever the study lives.

A step's *basis* is its stage config flattened to ``key.path -> value``, with every location made
portable: a path inside the study directory is written relative to it (``<out>/train/lora/model``),
a local model or tokenizer outside it by the identity of its files, a data source's path relative to
the data root, and the data roots themselves left out; instead every data file the step reads counts
by its content (``reads.<path> -> identity``). The fingerprint hashes the basis, and the basis is kept
in the step's state file, so a stale step can say which settings changed.

A file's identity is its size and a SHA-256 of its bytes; a file over ``WHOLE`` bytes (a GB-size
replay corpus, model weights) is hashed on three ``CHUNK``-byte samples (start, middle, end) instead,
so a dry run stays instant: an edit that keeps such a file's size and misses the three samples goes
unnoticed (give the changed file a new name). Modification times are not used: a copy (``cp -r``)
changes them and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

WHOLE = 16 << 20
"""Files up to this size are hashed whole."""
CHUNK = 1 << 20
"""Bytes per sample of a larger file."""
_VOLATILE = {"progress", "resume", "device"}
"""Config fields that do not change a step's result (the device: where it runs; its dtype is model.dtype's)."""
_INPUT_ROOTS = {"data_root", "base_dir"}
"""Where relative data paths resolve from: the files read are counted by content instead."""
_MODELS = {"spec", "tokenizer", "adapter", "tuned", "parents"}
"""Fields that name a model or adapter: inside the study directory, a local path, or a Hub or built-in name."""
NO_RECORD = "settings changed (no record of the earlier settings)"


def basis(config: BaseModel | None, out: Path, data_root: Path | None, reads: list[Path]) -> dict[str, Any]:
    """``config`` flattened with portable locations (see the module docstring), plus the content of ``reads``."""
    flat: dict[str, Any] = {}
    if config is not None:
        _flatten(config.model_dump(mode="json", exclude=_VOLATILE), "", flat)
    settings: dict[str, Any] = {}
    for key, value in flat.items():
        field = next(p for p in reversed(key.split(".")) if not p.isdigit())
        if field in _INPUT_ROOTS:
            continue
        if isinstance(value, str) and field in _MODELS | {"out"}:
            value = _place(value, out, local=field != "out")
        elif isinstance(value, str) and field == "path" and data_root is not None:
            value = _relative(Path(value), data_root)
        settings[key] = value
    for path in reads:
        settings[f"reads.{_relative(path, data_root) if data_root else path.name}"] = identity(path)
    return settings


def digest(basis: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def what_changed(old: dict[str, Any] | None, new: dict[str, Any], shown: int = 3) -> str:
    """The settings that differ between two bases (``key: old → new``, the first ``shown``), then the
    input steps whose fingerprint changed (or that the step now reads), and how many it no longer reads."""
    if old is None:
        return NO_RECORD
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k, _UNSET) != new.get(k, _UNSET)]
    settings = [k for k in keys if not k.startswith("deps.")]
    steps = [k.removeprefix("deps.") for k in keys if k.startswith("deps.") and k in new]
    dropped = sum(k.startswith("deps.") and k not in new for k in keys)
    parts = [f"{k}: {_short(old.get(k, _UNSET))} → {_short(new.get(k, _UNSET))}" for k in settings[:shown]]
    if len(settings) > shown:
        parts.append(f"and {len(settings) - shown} more settings")
    if steps:
        parts.append(f"an input step changed: {', '.join(steps[:shown])}"
                     + (f" and {len(steps) - shown} more" if len(steps) > shown else ""))
    if dropped:
        parts.append(f"{dropped} input step{'s' if dropped > 1 else ''} no longer read")
    return "; ".join(parts) or "settings changed"


def only_new_defaults(config: BaseModel | None, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` differs from ``old`` (a basis an earlier medtune kept) only by settings that did not exist
    then and are at their defaults now: fields medtune added since, which leave the step's result as it was.
    A long study run over several sessions then survives an upgrade of medtune; a setting that changed, a new
    one set to something else, an input file or an input step that changed still make the step stale."""
    keys = [k for k in old.keys() | new.keys() if old.get(k, _UNSET) != new.get(k, _UNSET)]
    return config is not None and all(
        k not in old and k != "kind" and not k.startswith(("reads.", "deps.")) and _at_default(config, k) for k in keys)


def _at_default(config: BaseModel, key: str) -> bool:
    """Whether the setting at flattened ``key`` (``data.decontamination.n``, ``eval_sources``) is its field's default."""
    *path, last = key.split(".")
    owner: Any = config
    for part in path:
        if isinstance(owner, BaseModel) and part in type(owner).model_fields:
            owner = getattr(owner, part)
        elif isinstance(owner, (list, tuple)) and part.isdigit() and int(part) < len(owner):
            owner = owner[int(part)]
        elif isinstance(owner, dict) and part in owner:
            owner = owner[part]
        else:
            return False
    if not isinstance(owner, BaseModel) or last not in type(owner).model_fields:
        return False
    return bool(getattr(owner, last) == type(owner).model_fields[last].get_default(call_default_factory=True))


def identity(path: Path) -> str:
    """Size and SHA-256 of a file (sampled when large), or of every file in a directory (hidden ones aside)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(path).as_posix()} {identity(p)}\n".encode())
        return f"{len(files)} files sha256:{h.hexdigest()[:12]}"
    st = path.stat()
    return f"{st.st_size} B sha256:{_file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)}"


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """(size and mtime only key the cache: a file rewritten in place is hashed again)"""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        else:
            for start in (0, size // 2 - CHUNK // 2, size - CHUNK):
                f.seek(start)
                h.update(f.read(CHUNK))
    return h.hexdigest()[:12]


def _flatten(value: Any, key: str, flat: dict[str, Any]) -> None:
    """Mappings and lists of mappings become ``a.b`` / ``a.0.b`` keys; lists of plain values stay one value."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{key}.{k}" if key else str(k), flat)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{key}.{i}", flat)
    else:
        flat[key] = value


def _place(value: str, out: Path, local: bool) -> str:
    """A directory or model as the same thing wherever the study lives: ``<out>/...`` inside the study
    directory; with ``local``, a local model outside it by its files' identity; else as written (a Hub
    or built-in name; an output directory outside the study, which the step does not write)."""
    path = Path(value).expanduser()
    resolved, root = path.resolve(), out.resolve()
    if resolved.is_relative_to(root):
        return "<out>/" + resolved.relative_to(root).as_posix()
    return f"local {identity(path)}" if local and path.exists() else value


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (a relative path already is)."""
    if not path.expanduser().is_absolute():
        return path.as_posix()
    return Path(os.path.relpath(path.expanduser().resolve(), root.resolve())).as_posix()


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


_UNSET = _Unset()


def _short(value: Any, width: int = 40) -> str:
    text = repr(value) if value is _UNSET else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2 - 1):]
