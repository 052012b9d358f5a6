"""``results.json`` of ``medtune eval``: a typed record with its load/save, owned by the evaluation.

Readers (the study's results, the report) load an :class:`EvalResult` and ask it for a task's
headline metric; nobody else parses the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medtune import atomic

Metric = dict[str, Any]
"""value, stderr, ci95 [lo, hi], n."""


class EvalResult(BaseModel):
    """One model scored on its tasks (per task: its metrics, e.g. acc / acc_norm / perplexity, timings)."""

    model_config = ConfigDict(extra="allow")

    model: str
    adapter: str | None = None
    mode: str = "loglikelihood"
    tasks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "EvalResult | None":
        """The results of an eval directory (or its results.json); None when it has not run."""
        path = Path(path)
        path = path / "results.json" if path.is_dir() or not path.suffix else path
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.model_dump(mode="json", exclude_defaults=False))

    def acc(self, task: str) -> Metric | None:
        return (self.tasks.get(task) or {}).get("acc")

    def headline(self, task: str) -> Metric | None:
        """The metric a table shows for a task: accuracy, else perplexity."""
        r = self.tasks.get(task) or {}
        return r.get("acc") or r.get("perplexity")

    def unparsed(self) -> dict[str, int]:
        return {t: r["unparsed"] for t, r in self.tasks.items() if "unparsed" in r}
