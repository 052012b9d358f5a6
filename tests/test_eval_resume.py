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
    elif change == "adapter":  # retrained in place: same path, new weights
        make_random_adapter(tiny_llama, adapter, seed=2, std=0.05)
    else:
        kw = {}
    calls = _scored(monkeypatch)
    ev.evaluate(_cfg(tiny_llama, out, adapter, **kw))
    assert calls == ["pubmedqa", "medmcqa", "ppl_general"]



def test_an_adapter_rewritten_with_the_same_weights_keeps_the_finished_tasks(tiny_llama, tmp_path, monkeypatch):
    """The adapter is keyed by content: a copy or a rewrite with new mtimes is the same adapter."""
    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=1, std=0.05)
    out = tmp_path / "ev"
    _scored(monkeypatch, stop_at="ppl_general")
    with pytest.raises(Stop):
        ev.evaluate(_cfg(tiny_llama, out, adapter))
    for weights in adapter.iterdir():
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    calls = _scored(monkeypatch)
    ev.evaluate(_cfg(tiny_llama, out, adapter, resume=True))
    assert calls == ["ppl_general"]


def test_the_built_in_model_is_keyed_by_its_gguf_not_its_rebuildable_cache(tmp_path, monkeypatch):
    """A rebuilt safetensors cache (new mtimes, same weights) keeps an interrupted evaluation's tasks; another
    GGUF does not."""
    from medtune import models

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setattr(models, "embedded_gguf_path", lambda spec: gguf)
    cfg = ev.EvalConfig.model_validate({"model": {"spec": "smollm2-135m"}, "tasks": "pubmedqa", "out": str(tmp_path / "o")})
    key = ev.resume_key(cfg)
    assert ev.resume_key(cfg) == key
    gguf.write_bytes(b"GGUF" + bytes(65))  # another model file
    assert ev.resume_key(cfg) != key
