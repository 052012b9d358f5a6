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
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
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


STAGING_MARK = ".medtune-staging.json"
"""In a staging directory while it is written: its writer's process id and host."""
_OLD_STAGING_MARKS = (STAGING_MARK, ".medtune-build-pid")
"""The marks that make a ``.tmp-*`` directory medtune's (the second: ``data build``'s earlier one, a bare pid)."""


@contextlib.contextmanager
def staging_dir(target: str | Path, kind: str) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``target``; on success mark it as a ``kind`` artifact
    and rename it to ``target``.

    ``target`` is replaced only when :func:`medtune.outdir.check` allows it (it does not exist, is
    empty, or is a medtune ``kind`` artifact), checked before the block runs and again before the
    rename. The old directory is renamed aside before the new one takes its name and deleted after,
    so no moment has a half-deleted ``target``. If the block raises ``target`` is untouched and the
    partial directory is removed. A process killed outright (SIGTERM, SIGKILL, a power cut) cannot
    remove it: the staging directory carries its writer's pid (:data:`STAGING_MARK`), and the next
    staging of the same ``target`` removes those whose writer is gone (:func:`remove_stale`).
    """
    from medtune import outdir

    target = Path(target)
    outdir.check(target, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        write_json(tmp / STAGING_MARK, {"pid": os.getpid(), "host": socket.gethostname()})
        yield tmp
        (tmp / STAGING_MARK).unlink(missing_ok=True)
        outdir.mark(tmp, kind)
        settle_modes(tmp)
        fsync_tree(tmp)  # libraries (safetensors, save_pretrained) write without fsync
        outdir.check(target, kind)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".old-{target.name}-"))
            os.replace(target, old)  # onto the empty directory mkdtemp made: a rename, nothing deleted yet
            os.replace(tmp, target)
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_dir(target.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and isinstance(err.filename, str) and Path(err.filename).is_relative_to(tmp):
            # name the file as the user knows it (in target), not in the staging directory just removed
            raise OSError(err.errno, err.strerror, str(target / Path(err.filename).relative_to(tmp))) from err
        raise


def remove_stale(target: Path) -> None:
    """Delete the staging directories of ``target`` left by writers that were killed: a ``.tmp-NAME-*``
    directory next to it that holds medtune's mark, written on this host by a process that is gone.
    A directory without the mark (not medtune's), of a live process, or of another host (on a shared
    file system, where this host cannot tell whether its writer lives) is left alone."""
    for d in target.parent.glob(f".tmp-{target.name}-*"):
        writer = next((_writer(d / name) for name in _OLD_STAGING_MARKS if (d / name).is_file()), None)
        if writer is None or writer[1] not in (None, socket.gethostname()):
            continue
        try:
            os.kill(writer[0], 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _writer(mark: Path) -> tuple[int, str | None] | None:
    """(pid, host) from a staging mark (host None for the bare pid ``data build`` used to write)."""
    try:
        data = json.loads(mark.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("host"), str):
        pid, host = data.get("pid"), data["host"]
    else:
        pid, host = data, None
    # 0 and negative numbers name process groups to os.kill, never one writer
    return (pid, host) if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


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
