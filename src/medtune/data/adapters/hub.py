"""Read a Hugging Face Hub dataset (or a local directory in the same layout) with clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune import hub_access
from medtune.data.spec import SourceConfig
from medtune.errors import DataError


def hub_label(src: SourceConfig, split: str) -> str:
    """How errors name a Hub source: ``id [config/split]``."""
    return f"{src.hub} [{src.hub_config or 'default'}/{split}]"


def hub_split(src: SourceConfig, default: str) -> str:
    return src.split or default


def load_hub(src: SourceConfig, default_split: str) -> Any:
    """``datasets.load_dataset(src.hub, src.hub_config, split=..., streaming=src.streaming)``; any
    failure names id/config/split. Streamed, it is an ``IterableDataset``: rows arrive as they are read.

    A Hub id that is not cached fails at once when the Hub cannot be reached (see :mod:`medtune.hub_access`)."""
    import datasets  # imported here: it is slow to import and only Hub sources need it

    split = hub_split(src, default_split)
    problem = None if Path(str(src.hub)).expanduser().exists() else hub_access.unavailable("dataset", str(src.hub))
    if problem:
        raise DataError(hub_label(src, split), None, None, problem)
    try:
        return datasets.load_dataset(src.hub, src.hub_config, split=split, streaming=src.streaming)
    except Exception as err:  # datasets raises many types (not found, offline, bad split); report them all alike
        raise DataError(
            hub_label(src, split), None, None,
            f"cannot load Hub dataset {src.hub!r} (config {src.hub_config!r}, split {split!r}): "
            f"{type(err).__name__}: {err}",
        ) from err


def hub_rows(ds: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("index N", row)`` with N the 0-based position, so ``ds[N]`` shows the row."""
    for i, row in enumerate(ds):
        yield f"index {i}", row


def require_columns(ds: Any, columns: list[str], label: str) -> None:
    """Fail once, naming the missing column, instead of once per row. A streamed dataset whose
    columns are not known before reading (JSON-lines without features) is asked for its first row."""
    names = ds.column_names
    if names is None:
        names = list(next(iter(ds), {}))
    have = list(names)
    for col in columns:
        if col not in have:
            raise DataError(label, None, col, f"column missing (available: {', '.join(have)})")
