"""Read-only memory maps of token files whose touched pages can be let go.

Why not plain ``np.load(mmap_mode="r")``: every page a process has touched through a map counts in
its resident set until the map is closed, so reading a whole 1B-token build in random order would
grow the trainer's RSS to the build's size (file pages the kernel could drop, but RSS all the same).
:meth:`Mapped.release` tells the kernel we are done with the pages (``MADV_DONTNEED``); they stay in
the page cache, the next read maps them again, and the RSS stays flat whatever the file's size.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np


class Mapped:
    """A read-only array over ``path``: a ``.npy`` file (dtype and shape from its header) or a raw file
    of ``dtype`` items."""

    def __init__(self, path: Path, dtype: np.dtype | None = None) -> None:
        self.path = path
        with path.open("rb") as fh:
            if path.suffix == ".npy":
                major, _ = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dt = read_header(fh)
                offset = fh.tell()
            else:
                assert dtype is not None, "a raw token file needs its dtype"
                dt, offset, fortran = np.dtype(dtype), 0, False
                shape = ((path.stat().st_size - offset) // np.dtype(dtype).itemsize,)
            size = path.stat().st_size
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        count = int(np.prod(shape))
        if self._map is None or count == 0:
            self.array = np.zeros(shape, dt)
        else:
            self.array = np.frombuffer(self._map, dtype=dt, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")

    def release(self) -> None:
        """Drop the pages read so far from this process (they stay cached by the kernel)."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)
