"""``medtune chat``: ask a base, tuned or averaged model questions, with the answer streamed as it is
generated, so a person can see what tuning and averaging changed.

With ``--prompt`` it answers once and exits; otherwise it reads questions from the terminal (or from
standard input when that is not a terminal) until ``/exit`` or end of input. ``/reset`` forgets the
conversation so far.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from medtune.config import ModelConfig
from medtune.placement import Placed


class ChatConfig(Placed):
    """Which model to talk to and how it decodes."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model (or a merged model directory)."""
    adapter: str | None = None
    """A LoRA adapter directory (a training run's model/, or a merged adapter) applied on the model."""
    alpha: float = Field(1.0, ge=0, le=1)
    """With an adapter: weight on the tuned model (0 = base, 1 = tuned; WiSE-FT interpolation, no merge)."""
    prompt: str | None = None
    """Answer this one question and exit (no interactive session)."""
    system: str | None = None
    """A system message put before the conversation (chat-template models)."""
    chat_template: bool = True
    """Wrap the conversation in the tokenizer's chat template when it has one (instruction-tuned models)."""
    max_new_tokens: int = Field(256, ge=1)
    """Tokens to generate per answer."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature; 0 decodes greedily (the same answer every time)."""
    seed: int = 0
    """Seed for sampling (temperature > 0)."""

    @field_validator("alpha")
    @classmethod
    def _alpha_needs_adapter(cls, alpha: float, info: ValidationInfo) -> float:
        """Runs only when alpha is given (defaults are not validated); adapter is declared before it."""
        if info.data.get("adapter") is None:
            raise ValueError("interpolates between the model and an adapter, so it needs adapter (--adapter DIR)")
        return alpha


def render_prompt(tokenizer: Any, turns: list[dict[str, str]], use_template: bool) -> str:
    """The text the model continues: the chat template if there is one (and it is wanted), else a plain
    ``Question: ... Answer:`` transcript."""
    if use_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    lines = []
    for t in turns:
        role = {"system": "", "user": "Question: ", "assistant": "Answer: "}[t["role"]]
        lines.append(role + t["content"])
    return "\n".join(lines) + "\nAnswer:"


def load(cfg: ChatConfig) -> tuple[Any, Any]:
    from medtune import models
    from medtune.placement import load_placed

    resolved = models.resolve(cfg.model.spec, allow_pickle=cfg.model.allow_pickle)
    model, _ = load_placed(resolved, cfg.model, cfg.device)
    model = models.load_with_adapter(model, cfg.adapter, allow_pickle=cfg.model.allow_pickle, base=resolved,
                                     allow_other_base=cfg.model.allow_other_base)
    if cfg.adapter is not None and cfg.alpha != 1.0:
        from medtune.merge.sources import LoraScaler

        LoraScaler(model).set_mix_weight(cfg.alpha)
    model.eval()
    return model, models.load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)


def answer(model: Any, tokenizer: Any, cfg: ChatConfig, turns: list[dict[str, str]], stream: bool = True) -> str:
    """Generate the next assistant turn, printing it token by token as it comes when ``stream``."""
    import torch
    from transformers import TextStreamer

    text = render_prompt(tokenizer, turns, cfg.chat_template)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not (cfg.chat_template and tokenizer.chat_template)).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    sample = cfg.temperature > 0
    if sample:
        torch.manual_seed(cfg.seed)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                             temperature=cfg.temperature if sample else None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, streamer=streamer)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def chat(cfg: ChatConfig) -> list[dict[str, str]]:
    """Run the session; returns the conversation."""
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("loading the model ..."):
        model, tokenizer = load(cfg)
    what = cfg.model.spec + (f" + {cfg.adapter}" if cfg.adapter else "") + (f" at α={cfg.alpha:g}" if cfg.adapter else "")
    base: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    turns = list(base)
    if cfg.prompt is not None:
        turns.append({"role": "user", "content": cfg.prompt})
        turns.append({"role": "assistant", "content": answer(model, tokenizer, cfg, turns)})
        return turns
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # a byte that is not UTF-8 becomes U+FFFD, not the end of the session
        sys.stdin.reconfigure(errors="replace")
    if interactive:
        console.print(f"[bold]{what}[/] — ask a question; /reset forgets the conversation, /exit (or Ctrl-D) quits.")
    while True:
        try:
            question = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        question = question.strip()
        if question in ("/exit", "/quit"):
            break
        if question == "/reset":
            turns = list(base)
            continue
        if not question:
            continue
        turns.append({"role": "user", "content": question})
        if interactive:
            print("model> ", end="", flush=True)
        turns.append({"role": "assistant", "content": answer(model, tokenizer, cfg, turns)})
    return turns
