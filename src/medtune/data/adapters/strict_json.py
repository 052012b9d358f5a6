"""Strict JSON for source files: what ``json.loads`` lets through but no source may hold.

Python's parser accepts three things that silently change or break an item, so they are refused here:

* a key repeated in one object (``json.loads`` keeps the last value, so a PubMedQA item with a
  repeated PMID replaces the first one without a word);
* ``NaN`` / ``Infinity`` (not JSON; medtune writes only strict JSON, so such a row could not even be
  written back to ``rejects.jsonl``);
* a lone UTF-16 surrogate escape such as ``"\\ud800"``: valid JSON, but not text, so the tokenizer
  fails on it deep inside a run; :func:`surrogate_field` finds the field that holds it.
"""

from __future__ import annotations

import json
import re
from typing import Any


class DuplicateKey(ValueError):
    """A key appears twice in one JSON object."""

    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (write a number or null)")


def loads(text: str) -> Any:
    """``json.loads`` that raises :class:`DuplicateKey` or ``ValueError`` for the cases above
    (``json.JSONDecodeError``, a ``ValueError`` too, for malformed text)."""
    return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # cheap pre-check on the raw text: pairs match too


def surrogate_field(raw: str, value: Any) -> tuple[str, str] | None:
    """(field path such as ``question.choices[2].text``, the escape ``\\ud800``) of the first string in
    ``value`` (parsed from ``raw``) that holds a lone surrogate; None if there is none."""
    if not _SURROGATE_ESCAPE.search(raw):
        return None
    return _find_surrogate(value, "")


def _find_surrogate(value: Any, name: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (name, f"\\u{ord(found.group()):04x}") if found else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        child = f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}" if name else key
        hit = _find_surrogate(key, child) if isinstance(key, str) else None
        hit = hit or _find_surrogate(item, child)
        if hit:
            return hit
    return None


def top_level_key_lines(text: str) -> dict[str, list[int]]:
    """Line numbers (from 1) at which each key of the top-level object of ``text`` starts.

    Only for error messages (a repeated PMID names both lines), so it runs after a failed parse:
    ``json`` reports no positions for keys, so the top level is walked with its own scanner.
    """
    decoder, ws = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    lines: dict[str, list[int]] = {}
    i, line, counted = ws.match(text, 0).end() + 1, 1, 0  # i: just past "{"
    while True:
        i = ws.match(text, i).end()
        if i >= len(text) or text[i] != '"':
            return lines
        line, counted = line + text.count("\n", counted, i), i
        key, i = json.decoder.scanstring(text, i + 1)
        lines.setdefault(key, []).append(line)
        i = ws.match(text, i).end() + 1  # past ":"
        _, i = decoder.raw_decode(text, ws.match(text, i).end())
        i = ws.match(text, i).end()
        i += text[i : i + 1] == ","


def array_item_lines(text: str) -> list[int]:
    """Line numbers (from 1) at which each item of the top-level array of ``text`` starts, so a JSON
    file holding a list of items names the line of a bad item, as JSON-lines files do. Called on text
    that :func:`loads` parsed, so the walk needs no error handling."""
    decoder, ws = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    lines: list[int] = []
    i, line, counted = ws.match(text, 0).end() + 1, 1, 0  # i: just past "["
    while True:
        i = ws.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return lines
        line, counted = line + text.count("\n", counted, i), i
        lines.append(line)
        _, i = decoder.raw_decode(text, i)
        i = ws.match(text, i).end()
        i += text[i : i + 1] == ","
