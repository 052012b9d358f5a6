"""Shared 13-grams between the perplexity evaluation texts and the general training (replay / control) texts.

    python bench/study/text_overlap.py ../shared/data/general/replay/wikitext-2_test.tokens.txt \
        ../shared/data/general/replay/wikitext-2_valid.tokens.txt \
        --train ../shared/data/general/replay/wiki_demo.txt ../shared/data/general/replay/c4_demo.jsonl

medtune's leakage guard compares QA items (question and options); it does not compare running text. The
attribution study trains its control and its replay variant on a Wikipedia and a C4 sample and reports
WikiText-2 perplexity, which is Wikipedia too: a shared passage would lower the control's general
perplexity by memorisation, not by anything the report attributes to it. This checks that, the usual way
of decontamination reports (GPT-3, Brown et al. 2020: 13-gram overlap on normalised words): WikiText's
tokenisation marks (``@-@``, ``<unk>``) are undone, words are lower-cased alphanumeric runs, and every
WikiText article (split on its `` = Title = `` headings) is checked against every 13-gram of the training
texts. Not a benchmark and not a test: a data check whose output docs/results.md quotes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

N = 13


def words(text: str) -> list[str]:
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").replace("<unk>", " ")
    return re.findall(r"[a-z0-9]+", text.lower())


def grams(ws: list[str], n: int = N) -> set[tuple[str, ...]]:
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def text_of(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "\n".join(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    return path.read_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evaluated", nargs="+", type=Path, help="WikiText-style evaluation texts")
    ap.add_argument("--train", nargs="+", type=Path, required=True, help="training texts (.txt or .jsonl with 'text')")
    args = ap.parse_args()
    trained: set[tuple[str, ...]] = set()
    for path in args.train:
        ws = words(text_of(path))
        trained |= grams(ws)
        print(f"train {path.name}: {len(ws):,} words")
    for path in args.evaluated:
        articles = [a for a in re.split(r"\n = [^=].*? = \n", path.read_text()) if len(words(a)) >= N]
        touched = [a for a in articles if grams(words(a)) & trained]
        all_grams = grams(words(path.read_text()))
        shared = all_grams & trained
        print(f"{path.name}: {len(articles)} articles, {len(touched)} share a {N}-gram with the training texts; "
              f"{len(shared):,} of {len(all_grams):,} {N}-grams shared")


if __name__ == "__main__":
    main()
