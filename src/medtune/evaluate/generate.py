"""Generation-based scoring: greedy decoding plus answer extraction (comparable to LMFlow's medical numbers).

An output the extractor cannot map to one option is counted wrong *and* reported as unparsed, so a
model that stops answering in the expected format is visible instead of silently scoring low.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from medtune.data.records import QARecord

_LETTER = re.compile(r"^\W*(?:answer\s*(?:is)?\s*:?\s*)?\(?([A-J])\b\)?", re.IGNORECASE)
_STATED = re.compile(r"\banswer\b[^.\n]{0,40}?\b(?:is|would be|:)\s*:?\s*\(?([A-Za-z]+)\b", re.IGNORECASE)
"""A stated answer anywhere in the output: "The answer is no", "The correct answer is: D", "The answer
to the question is yes"."""
_WORD = re.compile(r"[a-z]+")


def _letter_index(letter: str, record: QARecord) -> int | None:
    idx = "ABCDEFGHIJ".find(letter.upper())
    return idx if 0 <= idx < len(record.options) else None


def extract_answer(output: str, record: QARecord, scores_letters: bool) -> int | None:
    """Option index named by a generated answer, or None if it names none (or several).

    Letter tasks: the first standalone letter at the start ("B", "(B)", "B. text", "Answer: B").
    Word tasks (PubMedQA, ARC): the first word if it is an option (yes/no/maybe), else the option
    text the output starts with. Either kind, when the start names nothing: the first stated answer
    ("The answer is no.", "The correct answer is: D", "The answer to this question is yes").
    """
    text = output.strip()
    options = [o.lower() for o in record.options]
    if scores_letters:
        m = _LETTER.match(text)
        if m:
            return _letter_index(m.group(1), record)
    lowered = text.lower()
    words = _WORD.findall(lowered)
    if words and words[0] in options:
        return options.index(words[0])
    starts = [i for i, o in enumerate(options) if o and lowered.startswith(o)]
    if starts:
        return max(starts, key=lambda i: len(options[i]))
    m = _STATED.search(text)
    if m:
        said = m.group(1)
        if scores_letters and len(said) == 1:
            return _letter_index(said, record)
        if said.lower() in options:
            return options.index(said.lower())
    return None


def encode_prompt(tokenizer: Any, text: str, *, templated: bool) -> list[int]:
    """Token ids of a prompt. Text a chat template wrote already holds the special tokens the model
    expects (Llama-3's starts with ``<|begin_of_text|>``), so it is encoded without the tokenizer's own,
    which would be a second BOS; plain text gets the tokenizer's special tokens, as lm-eval encodes it.
    (``medtune chat`` encodes its templated turns by the same rule.)"""
    return tokenizer.encode(text, add_special_tokens=not templated)


@torch.inference_mode()
def greedy_outputs(model: Any, tokenizer: Any, contexts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8,
                   progress: bool = True, desc: str = "generating", templated: bool = False) -> list[str]:
    """Greedy continuations, batched with left padding, stopping at EOS or a blank line. ``templated``:
    the contexts are chat-template text (see :func:`encode_prompt`)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    outputs: list[str] = [""] * len(contexts)
    bar = tqdm(total=len(contexts), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = [encode_prompt(tokenizer, contexts[i], templated=templated) for i in idx]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, e in enumerate(enc):
            ids[row, width - len(e):] = torch.tensor(e)
            mask[row, width - len(e):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row, i in enumerate(idx):
            text = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            outputs[i] = text.lstrip().split("\n\n")[0]
        bar.update(len(idx))
    bar.close()
    return outputs
