"""An interrupted evaluation resumes at the first task it had not finished (EvalConfig.resume; a study's eval step)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_random_adapter

from medtune.evaluate import run as ev

FIXTURES = Path(__file__).parent / "fixtures"


REAL = {name: getattr(ev, name) for name in ("_mc_task", "_ppl_task")}
"""The scoring functions themselves (a spy wraps these, never another spy)."""


class Stop(Exception):
    """The interruption (what SIGTERM or a session's end does to a long evaluation)."""


def _cfg(tiny_llama: Path, out: Path, adapter: Path | None = None, **kw):
    return ev.EvalConfig.model_validate({"model": {"spec": str(tiny_llama)}, "tasks": "pubmedqa,medmcqa,ppl_general",
                                         "data_root": str(FIXTURES), "out": str(out), "progress": False,
                                         "task_sources": {"ppl_general": {"adapter": "text", "path": "text/replay.txt"}},
                                         **({"adapter": str(adapter)} if adapter else {}), **kw})


def _scored(monkeypatch, stop_at: str | None = None) -> list[str]:
    """Record the tasks scored (not reused); raise Stop when ``stop_at`` starts."""
    calls: list[str] = []
    for name, real in REAL.items():

        def spy(task, *a, _real=real, **k):
            if task.name == stop_at:
                raise Stop(task.name)
            calls.append(task.name)
            return _real(task, *a, **k)

        monkeypatch.setattr(ev, name, spy)
    return calls


def _files(out: Path) -> tuple[dict, list[str]]:
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    for t in tasks.values():
        t.pop("seconds", None), t.pop("items_per_s", None), t.pop("tokens_per_s", None)
    return tasks, (out / "predictions.jsonl").read_text().splitlines()


def test_an_interrupted_evaluation_resumes_at_its_first_unfinished_task_with_the_same_results(tiny_llama, tmp_path,
                                                                                               monkeypatch):
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.05)
    whole = tmp_path / "whole"
    ev.evaluate(_cfg(tiny_llama, whole, adapter))
    assert not (whole / "partial").exists()  # removed once results.json is written

    out = tmp_path / "stopped"
    calls = _scored(monkeypatch, stop_at="ppl_general")
    with pytest.raises(Stop):
        ev.evaluate(_cfg(tiny_llama, out, adapter))
    assert calls == ["pubmedqa", "medmcqa"] and sorted(p.name for p in (out / "partial").iterdir()) == [
        "medmcqa.json", "pubmedqa.json"]
    assert not (out / "results.json").exists()

    calls = _scored(monkeypatch)
    ev.evaluate(_cfg(tiny_llama, out, adapter, resume=True))
    assert calls == ["ppl_general"]  # the two finished tasks are not scored again
    assert _files(out) == _files(whole) and not (out / "partial").exists()


@pytest.mark.parametrize("change", ["setting", "adapter", "no resume"])
def test_kept_tasks_are_scored_again_when_a_setting_or_the_weights_changed(tiny_llama, tmp_path, monkeypatch, change):
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.05)
    out = tmp_path / "ev"
    _scored(monkeypatch, stop_at="ppl_general")
    with pytest.raises(Stop):
        ev.evaluate(_cfg(tiny_llama, out, adapter))
    kw: dict = {"resume": True}
    if change == "setting":
        kw["limit"] = 3
    elif change == "adapter":  # retrained in place: same path, new weights file
        weights = next(adapter.glob("*.safetensors"))
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    else:
        kw = {}
    calls = _scored(monkeypatch)
    ev.evaluate(_cfg(tiny_llama, out, adapter, **kw))
    assert calls == ["pubmedqa", "medmcqa", "ppl_general"]

