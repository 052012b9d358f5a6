"""Merge full checkpoints tensor by tensor from (sharded) safetensors files.

Only one output shard is held in memory while it fills, plus the input tensors of the tensor being
merged (read through safetensors' memory map), so peak memory stays near one shard plus one tensor
whatever the model size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medtune.errors import MedtuneError, ModelError

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


def merge_streaming(dirs: Sequence[Path], out: Path, combine: Combine, *, max_shard_bytes: int = 2 << 30) -> dict[str, object]:
    """Write ``combine`` of the models in ``dirs`` to ``out`` as sharded safetensors (+ index).

    Shapes and dtypes are checked per tensor and every merged tensor is checked for non-finite
    values; a mismatch names the tensor."""
    maps = [tensor_files(Path(d)) for d in dirs]
    _check([Path(d) for d in dirs], maps)
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[Path, object] = {}

    def get(path: Path, name: str) -> torch.Tensor:
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt")
        return handles[path].get_tensor(name)  # type: ignore[attr-defined]

    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, shard_no, total = 0, 0, 0
    shards: list[list[str]] = []

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_no
        if not shard:
            return
        shard_no += 1
        fname = f"model-{shard_no:05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        shards.append([fname])
        for n in shard:
            weight_map[n] = fname
        shard, shard_bytes = {}, 0

    for name in maps[0]:
        inputs = [get(m[name], name) for m in maps]
        for d, t in zip(dirs[1:], inputs[1:]):
            if t.shape != inputs[0].shape or t.dtype != inputs[0].dtype:
                raise ModelError(f"{d}: tensor '{name}' is {t.dtype} {tuple(t.shape)}, expected "
                                 f"{inputs[0].dtype} {tuple(inputs[0].shape)}")
        merged = combine(name, inputs)
        del inputs  # before the shard grows: at most the merged tensor and one input stay alive
        if not torch.isfinite(merged).all():
            raise MedtuneError(f"merged tensor '{name}' has non-finite values")
        size = merged.numel() * merged.element_size()
        if shard and shard_bytes + size > max_shard_bytes:
            flush()
        shard[name] = merged.contiguous()
        shard_bytes += size
        total += size
    flush()
    if shard_no == 1:
        (out / "model-00001.safetensors").rename(out / "model.safetensors")
    else:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja"):
        if (Path(dirs[0]) / f).is_file():
            shutil.copy(Path(dirs[0]) / f, out / f)
    return {"tensors": len(maps[0]), "bytes": total, "shards": shard_no}
