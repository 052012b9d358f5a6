"""Output directories: medtune writes into, or replaces, only directories it wrote itself.

Every artifact directory carries ``.medtune-artifact.json`` naming its kind (``merge``, ``data``,
``model``, ``train``, ``eval``, ``sweep``, ``report``, ``study``, ``gguf-cache``). A stage may write
into (or replace) an output directory only if it does not exist, is empty, or is a medtune
artifact of the same kind; anything else -- a directory of the user's, the current directory or one
above it, a file -- is refused with a :class:`ConfigError` naming it, before any work is done.

Directories written by medtune versions before the marker are recognised by the provenance files
those versions left (``KNOWN`` below), so an old study or training run still resumes in place.

A study or training ``out`` also has one writer at a time: :func:`writer_lock` holds an
``fcntl.flock`` on ``.medtune.lock`` inside it. The kernel drops the lock when its process dies, so
a killed run never blocks the next one; the holder's pid is written in the file for the message.
(Hand-written rather than the ``filelock`` package, which is not a dependency, because the
message must name the holder's pid and a lock left by a killed run must be reported as taken over.)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from medtune.errors import ConfigError, MedtuneError

MARKER = ".medtune-artifact.json"
LOCK = ".medtune.lock"
STEP_FILE = ".medtune-step.json"
"""The study's per-step state file (see :mod:`medtune.study.run`): its step name tells the kind."""
_BOOKKEEPING = {LOCK}
"""Entries that do not make a directory non-empty (a lock file is left behind on purpose)."""
_STEP_KINDS = {"eval": "eval", "eval-gen": "eval", "train": "train", "sweep": "sweep", "merge": "merge",
               "report": "report", "parts": "report"}
"""First part of a study step's name -> the kind of artifact its directory holds (``parts/A,B/report``:
the report of the part that ran variants A and B)."""

F = TypeVar("F", bound=Callable[..., Any])


class LockedError(MedtuneError):
    """Another medtune process is writing the same output directory."""


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _step_kind(d: Path) -> str | None:
    step = (_json(d / STEP_FILE) or {}).get("step")
    return _STEP_KINDS.get(str(step).split("/")[0]) if step else None


KNOWN: dict[str, Callable[[Path], bool]] = {
    "data": lambda d: (d / "manifest.json").is_file() and (any(d.glob("blocks*.safetensors")) or (d / "shards").is_dir()),
    "model": lambda d: is_artifact(d.parent, "train"),
    "train": lambda d: (d / "curves.json").is_file() or (d / "checkpoints").is_dir()
    or (d / "data" / "manifest.json").is_file(),
    "eval": lambda d: (d / "results.json").is_file() and (d / "predictions.jsonl").is_file(),
    "merge": lambda d: (d / "merge_provenance.json").is_file(),
    "sweep": lambda d: "points" in (_json(d / "results.json") or {}),
    "report": lambda d: (d / "report.json").is_file(),
    "study": lambda d: (d / "study.yaml").is_file(),
    "gguf-cache": lambda d: "cache_format" in (_json(d / "medtune_provenance.json") or {}),
}
"""Kind -> how a directory of that kind written before ``MARKER`` existed is recognised."""


def is_artifact(d: Path, kind: str) -> bool:
    """True when ``d`` is a medtune artifact of ``kind`` (by its marker, its study step, or old provenance)."""
    marker = _json(d / MARKER)
    if marker is not None:
        return marker.get("kind") == kind
    return _step_kind(d) == kind or KNOWN[kind](d)


def _kind_of(d: Path) -> str | None:
    marker = _json(d / MARKER)
    if marker is not None:
        return str(marker.get("kind"))
    return _step_kind(d) or next((k for k, known in KNOWN.items() if k != "model" and known(d)), None)


def check(target: str | Path, kind: str) -> None:
    """Raise :class:`ConfigError` unless ``target`` may be written (or replaced) as a ``kind`` artifact."""
    target = Path(target)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ConfigError(f"{target}: is the current directory or one above it; medtune writes each output "
                          "into a directory of its own: give a new or empty directory")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        what = "a symbolic link" if target.is_symlink() else "a file"
        raise ConfigError(f"{target}: is {what}, not a directory medtune wrote: give a new or empty directory")
    if not target.exists() or not [p for p in target.iterdir() if p.name not in _BOOKKEEPING]:
        return
    if is_artifact(target, kind):
        return
    other = _kind_of(target)
    found = f"a medtune {other} artifact" if other else "not written by medtune (it has no " + MARKER + ")"
    raise ConfigError(f"{target}: exists and is {found}, not a {kind} output; medtune only replaces or adds to "
                      "what it wrote itself: choose another --out, or move that directory away yourself")


def mark(directory: Path, kind: str) -> None:
    """Write ``directory``'s marker (kept as it is when it already says ``kind``)."""
    from medtune import __version__, atomic

    old = _json(directory / MARKER)
    if old is not None and old.get("kind") == kind:
        return
    atomic.write_json(directory / MARKER, {"kind": kind, "medtune_version": __version__,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def claim(directory: str | Path, kind: str) -> Path:
    """Check ``directory`` may hold a ``kind`` artifact, create it, and mark it; return it."""
    directory = Path(directory)
    check(directory, kind)
    directory.mkdir(parents=True, exist_ok=True)
    mark(directory, kind)
    return directory


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def writer_lock(directory: str | Path, what: str) -> Iterator[None]:
    """Hold the one-writer lock of ``directory`` (``what`` names the writer in messages: "study")."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _holder(fd)
            since = f", since {held['since']}" if "since" in held else ""
            raise LockedError(f"{directory}: another medtune {what} is writing here (pid {held.get('pid', 'unknown')}"
                              f"{since}); two writers on one directory corrupt each other: wait for it to finish, "
                              "or stop it, or choose another out") from None
        stale = _holder(fd)
        if stale.get("pid") not in (None, os.getpid()):  # a clean exit empties the file: that run was killed
            print(f"medtune: {directory}: taking over the lock left by pid {stale['pid']}, which ended without "
                  "releasing it", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def main_rank() -> bool:
    """True in the process that writes outputs (rank 0 of a launched group, or the only process)."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return True


def writes_into(kind: str, lock: str | None = None) -> Callable[[F], F]:
    """Decorate a stage ``fn(cfg)`` that writes into ``cfg.out``: claim it as ``kind`` first (rank 0 only)
    and, with ``lock`` (the writer's name in messages), hold its writer lock for the call. A config
    with ``dry_run`` set writes nothing, so it claims and locks nothing."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(cfg, "dry_run", False) or not main_rank():
                return fn(cfg, *args, **kwargs)
            out = Path(cfg.out)
            check(out, kind)
            existed = out.exists()
            try:
                with writer_lock(out, lock) if lock else contextlib.nullcontext():
                    claim(out, kind)
                    return fn(cfg, *args, **kwargs)
            except BaseException:
                if not existed:  # a stage that failed before writing anything leaves no directory behind
                    _unclaim(out)
                raise

        return run  # type: ignore[return-value]

    return wrap


def _unclaim(out: Path) -> None:
    """Remove ``out`` again if it holds nothing but what :func:`claim` and the lock put there."""
    ours = {MARKER, *_BOOKKEEPING}
    if not out.is_dir() or {p.name for p in out.iterdir()} - ours:
        return
    for name in ours:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    with contextlib.suppress(OSError):
        out.rmdir()
