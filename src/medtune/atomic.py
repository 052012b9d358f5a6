"""Atomic writes: write to a temporary name in the same directory, then rename over the target.

A reader (or a re-run after a crash) sees either the old file or the complete new one, never a part.
The temporary names come from :mod:`tempfile`, which creates them private (0600 / 0700); they are
given the mode an ordinary ``open``/``mkdir`` would (0666 / 0777 less the umask) before the rename,
so a report or a model is as readable to the group as any other file the user writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as fh:
            return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (and put it back at once)
    os.umask(mask)
    return mask


def settle_modes(root: Path) -> None:
    """Give every file under ``root`` 0666 and every directory 0777, less the umask (executables keep
    their x bits): what ``open``/``mkdir`` would have made. Needed because some writers create private
    files whatever the umask (safetensors 0.8 writes 0600, as does :mod:`tempfile`)."""
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if os.stat(path).st_mode & stat.S_IXUSR else 0o666) & ~mask)


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            # a failed write or fsync names no file (ENOSPC, EDQUOT, EIO): say which one it was
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n")


def write_jsonl(path: str | Path, rows: list[Any]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows))


def fsync_file(path: str | Path) -> None:
    """Flush a file written by someone else (safetensors, matplotlib) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries, so a rename into it survives a power cut (POSIX needs this)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (files first), before it is renamed into place."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


def replace(tmp: str | Path, path: str | Path) -> None:
    """Durably move a finished temporary file over ``path``: fsync it, rename, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
