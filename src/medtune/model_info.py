"""``medtune model info``: resolve a model spec and show what it is."""

from __future__ import annotations

import time

from pydantic import Field

from medtune.config import ModelConfig
from medtune.placement import Placed


class ModelInfoConfig(Placed):
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to inspect."""
    prompt: str | None = None
    """If set, greedily continue this prompt and print the result."""
    max_new_tokens: int = 32
    """Tokens to generate for --prompt."""


def model_info(cfg: ModelInfoConfig) -> dict[str, object]:
    from rich.console import Console

    from medtune import models
    from medtune.placement import load_placed

    console = Console()
    resolved = models.resolve(cfg.model.spec, allow_pickle=cfg.model.allow_pickle)
    started = time.perf_counter()
    import transformers.modeling_utils  # noqa: F401  (one-time Python import, reported apart from the load)

    imported = time.perf_counter()
    model, placed = load_placed(resolved, cfg.model, cfg.device)  # where and in which dtype, as every stage
    tok = models.load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
    seconds = time.perf_counter() - imported
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "spec": resolved.spec,
        "kind": resolved.kind,
        "path": resolved.path,
        "architecture": type(model).__name__,
        "parameters": n_params,
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "device": placed.device,
        "dtype": placed.dtype,
        "attention": str(model.config._attn_implementation),
        "import_seconds": round(imported - started, 2),
        "load_seconds": round(seconds, 2),
    }
    for key, value in info.items():
        console.print(f"[bold]{key:>13}[/]: {value:,}" if isinstance(value, int) else f"[bold]{key:>13}[/]: {value}")
    if cfg.prompt:
        import torch

        ids = tok(cfg.prompt, return_tensors="pt").to(placed.device)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        info["completion"] = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        console.print(f"[bold]{'prompt':>13}[/]: {cfg.prompt}")
        console.print(f"[bold]{'completion':>13}[/]: {info['completion']}")
    return info
