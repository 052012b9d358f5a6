"""Instruction data for supervised fine-tuning: alpaca, sharegpt and OpenAI-style ``messages`` rows.

Each row of a JSON-lines file or JSON array is one conversation, in whichever of the three layouts
it has (LLaMA-Factory's and the field's usual formats):

* alpaca: ``instruction``, optional ``input`` (appended after a blank line) and ``system``, ``output``;
* sharegpt: ``conversations: [{from: human | gpt | system, value}]`` (``user`` / ``assistant`` too);
* messages: ``messages: [{role: system | user | assistant, content}]``.

The build renders each conversation with the model's chat template (:func:`train_texts`) and trains
on the assistant turns only: a conversation with k assistant turns becomes k documents, the k-th the
conversation up to and including its k-th assistant turn, with loss on that turn (the template's
end-of-turn included) and the turns before it as context. So every assistant turn is trained on once,
in the context it was given, through the same answer-only mask and packing as QA documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.data.adapters import rows
from medtune.data.prompts import TrainText
from medtune.data.records import ChatRecord
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.errors import ConfigError, DataError

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
"""Role names of the three layouts -> the chat template's roles."""
LAYOUTS = "alpaca (instruction, input, output), sharegpt (conversations) or messages"


def _turns(value: Any, key: str, role_key: str, text_key: str, path: str, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(path, where, key, f"expected a non-empty list of turns, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(path, where, field, f"expected an object with {role_key!r} and {text_key!r}")
        role = turn.get(role_key)
        if role not in ROLES:
            raise DataError(path, where, f"{field}.{role_key}", f"{role!r} is not one of the allowed values "
                            f"{', '.join(ROLES)}")
        out.append((ROLES[role], rows.text(turn, text_key, path, f"{where}, {field}")))
    return out


def _messages(row: Any, path: str, where: str) -> tuple[tuple[str, str], ...]:
    """The conversation of one row, whichever layout it has; at least one non-empty assistant turn."""
    if not isinstance(row, dict):
        raise DataError(path, where, None, f"expected an object, got {type(row).__name__}")
    if "messages" in row:
        turns = _turns(row["messages"], "messages", "role", "content", path, where)
    elif "conversations" in row:
        turns = _turns(row["conversations"], "conversations", "from", "value", path, where)
    elif "instruction" in row:
        prompt = rows.text(row, "instruction", path, where)
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise DataError(path, where, "input", f"expected a string, got {type(extra).__name__}")
        system = [("system", rows.text(row, "system", path, where))] if row.get("system") else []
        turns = [*system, ("user", prompt + (f"\n\n{extra}" if extra and extra.strip() else "")),
                 ("assistant", rows.text(row, "output", path, where))]
    else:
        raise DataError(path, where, None, f"not a conversation: expected {LAYOUTS} (keys: {', '.join(map(str, row))})")
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(path, where, None, "no assistant turn: nothing to train on")
    return tuple(turns)


def load_chat(src: SourceConfig, path: Path | None, rejects: Rejects) -> list[ChatRecord]:
    """JSON-lines or a JSON array of conversations; ids are ``<file stem>:<line>``."""
    assert path is not None
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(path, None, None, f"unsupported file type {path.suffix!r} for adapter chat (expected .jsonl, .json)")
    p = str(path)
    meta = {"source": p, "split": src.split or rows.split_from_name(path)}
    raw = rows.jsonl_rows(path, rejects) if path.suffix == ".jsonl" else rows.json_array_rows(path, rejects)

    def convert(where: str, row: Any) -> ChatRecord:
        return ChatRecord(id=f"{path.stem}:{where.removeprefix('line ')}", dataset="chat",
                          messages=_messages(row, p, where), meta=dict(meta))

    return rows.convert_rows(raw, convert, rejects, path)


def _render(tokenizer: Any, turns: Sequence[tuple[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=False,
                                         add_generation_prompt=generation_prompt)


def check_template(tokenizer: Any, chat_template: str | None) -> None:
    """Install ``chat_template`` on the tokenizer, or require that it has its own (a clear error, not
    transformers' deep one at the first conversation)."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    elif not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise ConfigError(f"chat sources: {name} has no chat template (a base model's tokenizer usually has none); "
                          "set the data config's chat_template option to a Jinja chat template (e.g. the instruct "
                          "model's), or use the instruct model's tokenizer")


def train_texts(records: Sequence[ChatRecord], tokenizer: Any) -> list[TrainText]:
    """One :class:`TrainText` per assistant turn: ``prompt`` is the conversation rendered up to that turn with
    the template's generation prompt (the assistant header), ``answer`` the rest of the conversation rendered
    through that turn (its content and the template's end-of-turn). A template whose rendering of a longer
    conversation does not start with the shorter one's (it rewrites earlier turns) cannot be split so; that is
    an error naming the conversation."""
    from medtune.data.tokens import bos_id

    # A template that writes the BOS itself (Llama 3's "<|begin_of_text|>") would give each document two BOS tokens
    # where the tokenizer adds one (the packer then leads every document with it): the rendered one is left out.
    lead = tokenizer.bos_token if bos_id(tokenizer) is not None and tokenizer.bos_token else ""
    out = []
    for rec in records:
        for k, (role, _) in enumerate(rec.messages):
            if role != "assistant":
                continue
            prompt = _render(tokenizer, rec.messages[:k], generation_prompt=True)
            whole = _render(tokenizer, rec.messages[: k + 1], generation_prompt=False)
            if lead and prompt.startswith(lead) and whole.startswith(lead):
                prompt, whole = prompt[len(lead):], whole[len(lead):]
            if not whole.startswith(prompt) or len(whole) == len(prompt):
                raise DataError(rec.meta.get("source", rec.dataset), f"line {rec.id.rsplit(':', 1)[-1]}",
                                None, f"the chat template does not render turn {k + 1} after the turns before it "
                                "(it rewrites earlier turns), so its loss mask cannot be found")
            out.append(TrainText(f"{rec.id}#{k + 1}", prompt, whole[len(prompt):]))
    return out
