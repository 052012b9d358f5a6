"""What a model directory's weights are: a content hash to key cached scores on, not its path.

A sweep reuses a scored point only for the same weights, and a path says nothing about them: a
variant retrained in place, or an adapter copied over another, keeps its path. :func:`identity`
hashes (sha256, streamed) the files that make the model -- the tensors and the configs that shape
them (``config.json``, ``adapter_config.json``); tokenizer files and model cards are left out.
Training records each file's hash with its size and mtime (:func:`record`, ``medtune_weights.json``
in the model directory), so a full model is not read again; a file whose size or mtime no longer
matches its record (replaced by hand) is hashed again.

:func:`stat_identity` is the cheap kind, for a base model that may be many GB and is read on every
sweep run: file names, sizes and mtimes (a rewritten file has a new mtime). :func:`model_identity` applies
it to a model spec: the built-in model by its GGUF file, not by the safetensors cache converted from it
(a rebuilt cache has new mtimes and the same weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RECORD = "medtune_weights.json"
"""The hashes training records next to the model files it wrote."""
CONFIGS = ("config.json", "adapter_config.json")
"""Files besides the tensors that change what the weights compute (architecture, LoRA scaling and targets)."""
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")
"""Files that hold tensors (pickles only ever for a base model loaded with allow_pickle)."""


def model_files(d: Path) -> list[Path]:
    """The files of model directory ``d`` that make its weights, by name."""
    return sorted(p for p in Path(d).iterdir() if p.is_file() and (p.suffix in SUFFIXES or p.name in CONFIGS))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _combine(hashes: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}:{sha}\n" for name, sha in sorted(hashes.items())).encode()).hexdigest()


def _recorded(d: Path) -> dict[str, Any]:
    try:
        files = json.loads((d / RECORD).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def record(d: Path) -> str:
    """Write ``d``'s :data:`RECORD` (each model file's sha256, size and mtime); return its identity."""
    from medtune import atomic

    files = {}
    for p in model_files(d):
        st = p.stat()
        files[p.name] = {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    ident = _combine({n: f["sha256"] for n, f in files.items()})
    atomic.write_json(d / RECORD, {"sha256": ident, "files": files})
    return ident


def identity(d: Path) -> str:
    """sha256 over the names and contents of ``d``'s model files; a file that still has the size and mtime
    its record gives is taken from the record, any other is read."""
    recorded = _recorded(Path(d))
    hashes = {}
    for p in model_files(d):
        st, rec = p.stat(), recorded.get(p.name)
        same = isinstance(rec, dict) and (rec.get("size"), rec.get("mtime_ns")) == (st.st_size, st.st_mtime_ns)
        hashes[p.name] = str(rec["sha256"]) if same else sha256_file(p)  # type: ignore[index]
    return _combine(hashes)


def stat_identity(path: Path) -> str:
    """A hash of the names, sizes and mtimes of a model file or of a directory's model files (nothing is read)."""
    path = Path(path)
    files = [path] if path.is_file() else model_files(path)
    stamps = {str(p.resolve()): f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files}
    return _combine(stamps)


def model_identity(spec: str) -> str:
    """A base model's identity, cheaply (it may be many GB, and is read again on every run): a local
    directory's or GGUF file's file names, sizes and mtimes (:func:`stat_identity`); the built-in model's by
    its GGUF file in the installed package, since the cache converted from it may be rebuilt with new mtimes
    (a changed cache format, another installation); a Hub id itself."""
    from medtune import models
    from medtune.errors import ModelError

    path = Path(spec).expanduser()
    if spec in models.EMBEDDED_MODELS:
        try:
            path = models.embedded_gguf_path(spec)
        except ModelError:
            return spec  # not installed: loading it fails with this message
    return stat_identity(path) if path.exists() else spec
