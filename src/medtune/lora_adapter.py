"""Read and validate a PEFT LoRA adapter directory before anything scores, merges or writes it.

peft loads a broken adapter with a raw traceback at best (a truncated file, a bad JSON config, an
unknown target module) and at worst silently: a rank that disagrees with the config, or tensors on
modules the config does not target (peft skips them with a warning), give a model that is not the
one trained — and ``medtune merge`` would write it out again under a fresh name. Every check here
names the file (and the field or tensor) that is wrong.

An adapter of the right shapes can still belong to another base (another checkpoint of the same
architecture): :func:`check_base` compares the base it is applied on with the one its
``medtune_base.json`` (written by ``medtune train``) or ``adapter_config.json`` names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from medtune import atomic
from medtune.errors import ModelError
from medtune.finite import check_finite
from medtune.resolved import ResolvedModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_FILE = "adapter_model.bin"
BASE_FILE = "medtune_base.json"
"""The base an adapter was trained on (:class:`BaseIdentity`), next to its weights."""
OTHER_BASE_FLAG = "--model.allow-other-base (--base.allow-other-base for merge and sweep)"
_LORA_PARTS = {"lora_A": 0, "lora_B": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}
"""LoRA tensor kind -> the dimension that is the rank: A is (r, in), B is (out, r)."""


@dataclass(frozen=True)
class Adapter:
    """A validated adapter: its directory, parsed config, weights file and tensors."""

    path: Path
    config: dict[str, Any]
    weights: Path
    tensors: dict[str, Any]
    """Tensor name (as saved by peft, ``base_model.model.<module>.lora_A.weight``) -> tensor."""

    def modules(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Adapted module name -> {LoRA part: shape}."""
        out: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, t in self.tensors.items():
            part = _lora_part(key)
            if part is not None:
                out.setdefault(module_of(key), {})[part] = tuple(t.shape)
        return out


def module_of(key: str) -> str:
    """The model module a saved adapter tensor belongs to."""
    return key.split(".lora_")[0].removeprefix("base_model.model.")


def _lora_part(key: str) -> str | None:
    m = re.search(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.|$)", key)
    return m.group(1) if m else None


def read_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json``: valid JSON, a LoRA config with a positive integer rank and targets."""
    file = path / CONFIG_FILE
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{file}: cannot read the adapter config: {err}") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"{file}, line {err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{file}: the adapter config must be a JSON object, not {type(cfg).__name__}")
    if cfg.get("peft_type") != "LORA":
        raise ModelError(f"{file}, field 'peft_type': {cfg.get('peft_type')!r}; medtune handles LoRA adapters only ('LORA')")
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ModelError(f"{file}, field 'r': the LoRA rank must be a positive integer, not {r!r}")
    lora_alpha = cfg.get("lora_alpha")
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not lora_alpha > 0:
        raise ModelError(f"{file}, field 'lora_alpha': must be a positive number, not {lora_alpha!r}")
    targets = cfg.get("target_modules")
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise ModelError(f"{file}, field 'target_modules': must be a module name list or a regex string, not {targets!r}")
    if isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except re.error as err:
            raise ModelError(f"{file}, field 'target_modules': not a valid regular expression: {err}") from None
    return cfg


def read_tensors(path: Path, *, allow_pickle: bool) -> tuple[Path, dict[str, Any]]:
    """(weights file, tensors): safetensors, or a pickled ``adapter_model.bin`` only when allowed."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickled = path / PICKLED_FILE
        if not pickled.is_file():
            raise ModelError(f"{path}: not a PEFT adapter directory (no {WEIGHTS_FILE})")
        if not allow_pickle:
            raise ModelError(f"{pickled}: the adapter's weights are pickled; pickles can run arbitrary code when "
                             "loaded, so medtune refuses them by default. Convert them to safetensors, or allow them "
                             "explicitly with --allow-pickle (config: model.allow_pickle: true) if you trust the source.")
        weights = pickled
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return weights, load_file(str(weights))
        import torch

        return weights, dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    except Exception as err:  # safetensors raises its own SafetensorError; torch.load many kinds
        raise ModelError(f"{weights}: cannot read the adapter weights ({type(err).__name__}: {err}); the file is "
                         "truncated or corrupt") from None


def expected_rank(cfg: dict[str, Any], module: str) -> int:
    """The config's rank for ``module``: ``rank_pattern`` (peft's suffix-regex match) or ``r``."""
    for pattern, r in (cfg.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return int(r)
    return int(cfg["r"])


def targeted(cfg: dict[str, Any], module: str) -> bool:
    """Whether the config's ``target_modules`` covers ``module`` (peft's rule: exact or dotted suffix,
    a full-match regex for a string; "all-linear" covers every linear layer)."""
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    return module in targets or any(module.endswith(f".{t}") for t in targets)


def _check_tensors(adapter: Adapter) -> None:
    """LoRA tensors come in A/B pairs whose rank is the config's, on modules the config targets."""
    where = adapter.weights
    modules = adapter.modules()
    if not modules:
        raise ModelError(f"{where}: no LoRA tensors (lora_A / lora_B) in the adapter")
    for module, parts in modules.items():
        kinds = {p.removesuffix("_A").removesuffix("_B") for p in parts}
        for kind in kinds:
            if not {f"{kind}_A", f"{kind}_B"} <= set(parts):
                raise ModelError(f"{where}: module '{module}' has only {sorted(parts)}; LoRA needs both {kind}_A and {kind}_B")
        r = expected_rank(adapter.config, module)
        for part, shape in parts.items():
            if len(shape) < 2 or shape[_LORA_PARTS[part]] != r:
                raise ModelError(f"{where}: tensor '{module}.{part}' has shape {shape}, but {adapter.path / CONFIG_FILE} "
                                 f"says rank r={r}: the weights and the config belong to different adapters")
        if not targeted(adapter.config, module):
            raise ModelError(f"{where}: adapter tensors on '{module}', which {adapter.path / CONFIG_FILE} field "
                             f"'target_modules' ({adapter.config['target_modules']!r}) does not cover; peft would drop them")
    check_finite(adapter.tensors, str(where))


def read_adapter(path: str | Path, *, allow_pickle: bool = False) -> Adapter:
    """Read and validate an adapter directory on its own (config, weights, ranks, targets, finite values)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ModelError(f"{path}: not a PEFT adapter directory (no {CONFIG_FILE})")
    cfg = read_config(path)
    weights, tensors = read_tensors(path, allow_pickle=allow_pickle)
    adapter = Adapter(path, cfg, weights, tensors)
    _check_tensors(adapter)
    return adapter


def check_fits(adapter: Adapter, model: Any) -> None:
    """Every LoRA pair must sit on a module of ``model`` with its input/output sizes, and every listed
    target module must exist in the model. ``model`` may live on the meta device (no weights needed)."""
    modules = dict(model.named_modules())
    where = adapter.weights
    for name, parts in adapter.modules().items():
        module = modules.get(name)
        sizes = _sizes(module)
        if sizes is None:
            raise ModelError(f"{where}: adapter tensors target '{name}', which the model ({type(model).__name__}) does "
                             "not have as a linear or embedding layer: the adapter was trained on another architecture")
        for part, shape in parts.items():
            got, expected = (shape[1], sizes[0]) if part.endswith("_A") else (shape[0], sizes[1])
            if got != expected:
                raise ModelError(f"{where}: adapter tensor '{name}.{part}' has shape {shape}, but '{name}' has in={sizes[0]}, "
                                 f"out={sizes[1]}: the adapter belongs to another model size")
    targets = adapter.config["target_modules"]
    if isinstance(targets, list):
        names = list(modules)
        for t in targets:
            if not any(n == t or n.endswith(f".{t}") for n in names):
                raise ModelError(f"{adapter.path / CONFIG_FILE}, field 'target_modules': '{t}' matches no module of the "
                                 f"model ({type(model).__name__})")


def _sizes(module: Any) -> tuple[int, int] | None:
    """(in, out) of a layer LoRA can adapt: a linear layer's features, an embedding's (vocab, dim)."""
    if module is None:
        return None
    if hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "num_embeddings"):
        return int(module.num_embeddings), int(module.embedding_dim)
    return None


# ---------------------------------------------------------------- the base an adapter belongs to

FINGERPRINT_1D_VALUES = 4096
"""Values of a 1-D tensor (a norm, a bias) that go into :func:`weights_fingerprint`."""


class OtherBaseWarning(UserWarning):
    """An adapter is applied on a base other than the one it was trained on."""


class BaseIdentity(BaseModel):
    """``medtune_base.json``: the base an adapter was trained on, written by ``medtune train``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str
    """The model spec as given (built-in name, directory, .gguf file or Hub id)."""
    path: str
    """Where the spec resolved to: a local directory (for GGUF, its safetensors cache), or the Hub id."""
    weights: str | None = None
    """:func:`weights_fingerprint` of the base; None when its weights could not be read (pickles, uncached Hub)."""

    @classmethod
    def of(cls, base: ResolvedModel) -> BaseIdentity:
        return cls(spec=base.spec, path=base.path, weights=weights_fingerprint(base))

    @classmethod
    def load(cls, adapter_dir: str | Path) -> BaseIdentity | None:
        """The record next to an adapter; None for an adapter from elsewhere (the Hub, another tool)."""
        file = Path(adapter_dir) / BASE_FILE
        if not file.is_file():
            return None
        try:
            return cls.model_validate(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as err:
            raise ModelError(f"{file}: unreadable record of the adapter's base ({type(err).__name__}: "
                             f"{' '.join(str(err).split())})") from None

    def save(self, adapter_dir: str | Path) -> None:
        atomic.write_json(Path(adapter_dir) / BASE_FILE, self.model_dump(mode="json"))


def weights_fingerprint(base: ResolvedModel) -> str | None:
    """A sha256 over the first row of every weight tensor of a base (None without safetensors weights).

    Hashing all of an 8B model's 16 GB takes minutes; its 291 tensors' first rows are a few MB, read
    through safetensors' lazy slices, well under a second. Any other checkpoint of the architecture (a
    fine-tune, another seed or size of training) differs in those rows. Tensors are taken by name, in
    name order, and rounded to bf16, so a moved or copied directory, a resharded copy and a bf16 copy of
    an fp32 base (or a GGUF cache rebuilt elsewhere) all count as the same base. A model differing
    only beyond its first rows would pass; that is the price of a cheap check."""
    files = _weight_files(base)
    if not files:
        return None
    import torch
    from safetensors import safe_open

    rows: dict[str, tuple[list[int], Any]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is no mapping)
                part = st.get_slice(name)
                shape = list(part.get_shape())
                head = st.get_tensor(name) if not shape else part[:FINGERPRINT_1D_VALUES] if len(shape) == 1 else part[:1]
                rows[name] = (shape, head)
    digest = hashlib.sha256()
    for name in sorted(rows):
        shape, head = rows[name]
        digest.update(f"{name}|{shape}|".encode())
        digest.update(head.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def _weight_files(base: ResolvedModel) -> list[Path]:
    """A base's safetensors files: those its index names, else every ``*.safetensors`` in its directory
    (for a Hub model, its snapshot in the local cache)."""
    folder: Path | None = Path(base.path)
    if base.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(base.path, "config.json")
        folder = Path(config).parent if isinstance(config, str) else None
    if folder is None or not folder.is_dir():
        return []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable index: every safetensors file there
    return sorted(folder.glob("*.safetensors"))


def check_base(adapter: Adapter, base: ResolvedModel, *, allow_other_base: bool = False) -> None:
    """Refuse an adapter whose recorded base has other weights than ``base`` (unless allowed: then warn);
    warn when only names can be compared and they differ.

    A LoRA delta is learnt for its base's weights: on another checkpoint of the same shapes it loads
    without complaint and gives a model nobody trained. When the record's fingerprint equals the base's,
    paths do not matter (a moved directory, another GGUF cache). An adapter without a record (from the
    Hub) names its base only in ``adapter_config.json``'s ``base_model_name_or_path``: a warning at most."""
    record = BaseIdentity.load(adapter.path)
    trained = _trained_names(record, adapter.config)
    given = f"{base.spec}" + (f" ({base.path})" if base.path != base.spec else "")
    if record is not None and record.weights is not None:
        weights = weights_fingerprint(base)
        if weights == record.weights:
            return
        if weights is not None:
            said = f"{adapter.path}: trained on base {_shown(trained)}, but the base given, {given}, has other weights"
            if not allow_other_base:
                raise ModelError(f"{said}; the adapter's deltas were learnt for its own base. Pass {OTHER_BASE_FLAG} "
                                 "to apply it anyway")
            warnings.warn(OtherBaseWarning(f"{said}; applied anyway (allow_other_base)"), stacklevel=2)
            return
    if trained and not {_normal(n) for n in trained} & {_normal(base.spec), _normal(base.path)}:
        warnings.warn(OtherBaseWarning(f"{adapter.path}: trained on base {_shown(trained)}, applied on {given}; "
                                       "their weights could not be compared, so check that this is the same model"),
                      stacklevel=2)


def _trained_names(record: BaseIdentity | None, config: dict[str, Any]) -> list[str]:
    """The names the adapter gives its base, record first: spec, resolved path, peft's ``base_model_name_or_path``."""
    names = [record.spec, record.path] if record is not None else []
    names.append(config.get("base_model_name_or_path") or "")
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n))


def _shown(names: list[str]) -> str:
    return names[0] + (f" ({', '.join(names[1:])})" if names[1:] else "")


def _normal(name: str) -> str:
    """A name as compared: an existing path by its real location, anything else as written."""
    path = os.path.expanduser(name)
    return os.path.realpath(path) if os.path.exists(path) else name
