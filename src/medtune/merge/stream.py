"""Merge full checkpoints tensor by tensor from (sharded) safetensors files.

The output file's header is written first (offsets from the inputs' headers), then each tensor is
merged and written straight after it. Element-wise methods (interpolation, task arithmetic, soups)
read every input tensor in row chunks of about ``chunk_bytes``, so peak memory is a few chunks
whatever the model size. Methods that need whole-tensor statistics (TIES's top-k by magnitude,
DARE's per-tensor drop mask, SLERP's norms and angle: ``MergeMethod.whole_tensor``) read each tensor
whole: peak memory is then the largest tensor times (the number of inputs + the method's fp32
working copies) -- for TIES with one tuned model bench/merge_bench.py measured a peak of 10.6 x the
largest tensor (1141 MiB for SmolLM2-135M's 108 MiB embedding) -- still independent of the
model's size; ``merge_streaming`` returns ``largest_tensor_bytes`` so the provenance can say it. Input tensors
are read with plain file reads from the offsets in the safetensors header, not through a memory
map: a mapped file keeps every page it has touched resident (and an in-place write into a mapped
tensor turns its pages into private memory) until the file is closed, which made the peak grow
with the whole model (bench/merge_bench.py measured 7x a shard before this).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from medtune.errors import MedtuneError, ModelError
from medtune.finite import check_finite

Combine = Callable[[str, Sequence[torch.Tensor]], torch.Tensor]
"""(tensor name, the tensor from each input model) -> merged tensor."""


def tensor_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (sharded or single-file checkpoints)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / f for name, f in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise ModelError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), framework="pt") as fh:
        return {name: single for name in fh.keys()}


def _check(dirs: Sequence[Path], maps: Sequence[dict[str, Path]]) -> None:
    configs = [json.loads((d / "config.json").read_text()) for d in dirs]
    for d, c in zip(dirs[1:], configs[1:]):
        for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size"):
            if c.get(key) != configs[0].get(key):
                raise ModelError(f"{d}: config {key} is {c.get(key)!r} but {dirs[0]} has {configs[0].get(key)!r}: "
                                 "models of different architectures cannot be averaged")
    for d, m in zip(dirs[1:], maps[1:]):
        missing = sorted(set(maps[0]) ^ set(m))
        if missing:
            raise ModelError(f"{d}: tensor '{missing[0]}' is in one model but not the other ({len(missing)} differ)")


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class TensorReader:
    """Reads row ranges of a safetensors file's tensors into fresh memory, with ``readinto``."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            self.header = json.loads(fh.read(n))
        self.data_start = 8 + n

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise ModelError(f"{self.path}: tensor '{name}' has dtype {info['dtype']}, which the streamed merge cannot read")
        return _DTYPES[info["dtype"]], tuple(info["shape"])

    def rows(self, name: str, first: int, last: int) -> torch.Tensor:
        """Rows ``first:last`` of the tensor (its first dimension; a 0-d tensor is one row)."""
        dtype, shape = self.meta(name)
        start, end = self.header[name]["data_offsets"]
        n_rows = shape[0] if shape else 1
        row_bytes = (end - start) // max(n_rows, 1)
        part = torch.empty((last - first, *shape[1:]) if shape else (), dtype=dtype)
        raw = part.reshape(-1).view(torch.uint8).numpy()  # the part's own bytes (little-endian, as the file)
        if raw.nbytes != (last - first) * row_bytes:
            raise ModelError(f"{self.path}: tensor '{name}' has {end - start} bytes, not what its shape and dtype say")
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(self.data_start + start + first * row_bytes)
            if fh.readinto(memoryview(raw)) != raw.nbytes:
                raise ModelError(f"{self.path}: file ends inside tensor '{name}'")
        return part


def merge_streaming(dirs: Sequence[Path], out: Path, combine: Combine, *, max_shard_bytes: int | None = None,
                    chunk_bytes: int = 4 << 20, whole_tensor: bool = False) -> dict[str, object]:
    """Write ``combine`` of the models in ``dirs`` to ``out`` as sharded safetensors (+ index).

    ``combine`` must keep the dtype. Unless ``whole_tensor``, it must be element-wise: every tensor is
    merged in row chunks of about ``chunk_bytes`` that are written straight into the output file
    (its header is known from the inputs' headers), so only one chunk of each input is in memory,
    whatever the model or shard size. Output shards hold at most ``max_shard_bytes`` (default: the
    largest input shard, so the output is sharded like the input). Shapes and dtypes are checked
    before anything is merged, and every merged chunk for non-finite values; errors name the tensor."""
    maps = [tensor_files(Path(d)) for d in dirs]
    _check([Path(d) for d in dirs], maps)
    if max_shard_bytes is None:
        max_shard_bytes = max(os.path.getsize(f) for m in maps for f in set(m.values()))
    readers: dict[Path, TensorReader] = {}

    def reader(path: Path) -> TensorReader:
        if path not in readers:
            readers[path] = TensorReader(path)
        return readers[path]

    groups: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
    group_bytes, total = 0, 0
    for name in maps[0]:
        srcs = [reader(m[name]) for m in maps]
        dtype, shape = srcs[0].meta(name)
        for d, r in zip(dirs[1:], srcs[1:]):
            if r.meta(name) != (dtype, shape):
                other_dtype, other_shape = r.meta(name)
                raise ModelError(f"{d}: tensor '{name}' is {other_dtype} {other_shape}, expected {dtype} {shape}")
        size = torch.empty((), dtype=dtype).element_size() * torch.Size(shape).numel()
        if groups[-1] and group_bytes + size > max_shard_bytes:
            groups.append([])
            group_bytes = 0
        groups[-1].append((name, dtype, shape, size))
        group_bytes += size
        total += size
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups, 1):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        _write_shard(out / fname, group, maps, reader, combine, None if whole_tensor else chunk_bytes)
        weight_map.update({name: fname for name, *_ in group})
    if len(groups) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja"):
        if (Path(dirs[0]) / f).is_file():
            shutil.copy(Path(dirs[0]) / f, out / f)
    largest = max((size for g in groups for *_, size in g), default=0)
    return {"tensors": len(maps[0]), "bytes": total, "shards": len(groups), "largest_tensor_bytes": largest,
            "read": "whole tensors" if whole_tensor else f"row chunks of about {chunk_bytes} bytes"}


def _write_shard(path: Path, group: list[tuple[str, torch.dtype, tuple[int, ...], int]], maps: Sequence[dict[str, Path]],
                 reader: Callable[[Path], TensorReader], combine: Combine, chunk_bytes: int | None) -> None:
    """One safetensors file: the header first (offsets from the sizes), then each tensor chunk by chunk."""
    codes = {v: k for k, v in _DTYPES.items()}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, size in group:
        header[name] = {"dtype": codes[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name, dtype, shape, size in group:
            srcs = [reader(m[name]) for m in maps]
            n_rows = shape[0] if shape else 1
            step = n_rows if chunk_bytes is None else max(1, chunk_bytes * n_rows // max(size, 1))
            for first in range(0, n_rows, step):
                parts = [r.rows(name, first, min(first + step, n_rows)) for r in srcs]  # (rows, ...) each
                for r, p in zip(srcs, parts):
                    check_finite([(name, p)], str(r.path))
                part = combine(name, parts)
                check_finite([(name, part)], f"merged output {path}")
                if part.dtype != dtype:
                    raise MedtuneError(f"merging '{name}' changed its dtype from {dtype} to {part.dtype}")
                fh.write(memoryview(part.contiguous().reshape(-1).view(torch.uint8).numpy()))
