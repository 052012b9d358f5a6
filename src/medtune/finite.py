"""The one non-finite check: every loader and writer of weights calls :func:`check_finite`.

A single NaN in a weight makes every log-likelihood NaN, and ``argmax`` over NaNs picks option A,
so a broken model would get a plausible score (a third of three-choice items). medtune therefore
refuses non-finite weights where they enter (model and adapter loading for eval, merge, sweep,
chat and training; checkpoint resume) and where they leave (merged adapters and streamed shards,
as peft's ``safe_merge`` does), and the error names the tensor and the file it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from medtune.errors import ModelError

CHUNK_ELEMENTS = 1 << 24
"""Elements checked at a time, so the temporary bool mask stays small (16 MiB) for any tensor."""


class NonFiniteError(ModelError):
    """A tensor holds NaN or infinite values."""

    def __init__(self, source: str, tensor: str, n_nan: int, n_inf: int, numel: int):
        self.source, self.tensor = source, tensor
        super().__init__(f"{source}: tensor '{tensor}' has non-finite values ({n_nan} NaN, {n_inf} inf of {numel}): "
                         "the weights are broken (a diverged run or a corrupt file); medtune does not score or "
                         "save them")


def is_finite(t: Any) -> bool:
    """True when every element of ``t`` is finite; integer/bool and meta tensors always are."""
    import torch

    if t.device.type == "meta" or not (torch.is_floating_point(t) or torch.is_complex(t)):
        return True
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + CHUNK_ELEMENTS]).all()) for i in range(0, flat.numel(), CHUNK_ELEMENTS))


def check_finite(named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], source: str | Callable[[str], str]) -> None:
    """Raise :class:`NonFiniteError` for the first tensor with a NaN or inf value.

    ``source`` names where the tensors come from (a file, a model spec) or, when that depends on the
    tensor (sharded checkpoints), a function from the tensor name to it.
    """
    import torch

    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    for name, t in items:
        if not is_finite(t):
            where = source(name) if callable(source) else source
            t = t.detach()
            raise NonFiniteError(where, name, int(torch.isnan(t).sum()), int(torch.isinf(t).sum()), t.numel())
