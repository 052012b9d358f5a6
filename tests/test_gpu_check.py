"""The prepared GPU check (bench/gpu_check.py), checked through its dry run: the same code paths with tiny
shapes on the CPU. What it measures on a GPU is not checked here (docs/gpu.md: it has not run on one yet)."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
import gpu_check_models  # noqa: E402

PARTS = ["a", "a_plain", "b", "c", "d", "e_sweep", "e_merge", "e_parents", "f"]


def with_device(config: type) -> type:
    """The stage's config with a ``device`` field, as the placement change gives it (the real one if it has it)."""
    if "device" in config.model_fields:
        return config
    return type(config.__name__, (config,), {"__annotations__": {"device": str}, "device": "auto"})


def numbers_are_finite(numbers: dict) -> bool:
    return all(math.isfinite(v) for v in numbers.values() if isinstance(v, (int, float)) and not isinstance(v, bool))


def test_dry_run_reports_every_part_with_finite_numbers_or_a_reason(tmp_path, monkeypatch, capsys):
    """--dry-run runs every part on tiny models: each is ok with finite numbers and a summary (the sweep and
    merge placed where asked), or skipped with a reason; the JSON holds what main returns, the table one row a part."""
    from medtune.merge import run as merge_run
    from medtune.merge import sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "SweepConfig", with_device(sweep_mod.SweepConfig))
    monkeypatch.setattr(merge_run, "MergeConfig", with_device(merge_run.MergeConfig))
    out = tmp_path / "check.json"
    report = gpu_check.main(["--dry-run", "--inline", "--json", str(out), "--workdir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [p["part"] for p in report["parts"]] == PARTS and report["dry_run"] is True
    for part in report["parts"]:
        if part["status"] == "ok":
            assert part["numbers"]["summary"] and numbers_are_finite(part["numbers"]), part
        else:
            assert part["status"] == "skipped" and part["reason"], part
    by = {p["part"]: p for p in report["parts"]}
    assert all(by[k]["status"] == "ok" for k in ("a", "a_plain", "c", "d", "e_sweep", "e_merge", "e_parents", "f")), \
        report["parts"]
    assert {by[k]["numbers"]["device"] for k in ("e_sweep", "e_merge", "e_parents")} == {"cpu"}
    assert by["b"]["status"] == "ok" or by["b"]["reason"] == "bitsandbytes is not installed"
    if by["b"]["status"] == "ok":
        assert by["b"]["numbers"]["four_bit_layers"] > 0  # the base really is 4-bit
    assert by["a"]["numbers"]["estimate_gib"] > 0 and 0 < by["a"]["numbers"]["mfu"]
    assert set(report["medtune_over_plain"]) == {"tokens_per_s", "peak_memory"}
    table = capsys.readouterr().out
    assert "| part | what | status | s | result |" in table
    assert all(f"\n| {k} | " in table for k in PARTS)


def test_a_stage_without_a_device_option_is_reported_skipped(tmp_path, monkeypatch):
    """Where the sweep's or merge's config has no ``device`` field, its part says so instead of running."""
    from medtune.merge import run as merge_run
    from medtune.merge import sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "SweepConfig", types.SimpleNamespace(model_fields={}))
    monkeypatch.setattr(merge_run, "MergeConfig", types.SimpleNamespace(model_fields={}))
    ctx = gpu_check_models.Context(dry_run=True, workdir=str(tmp_path))
    got = [gpu_check.run_part(gpu_check.BY_KEY[k], ctx) for k in ("e_sweep", "e_merge")]
    assert [(r.status, r.reason) for r in got] == [("skipped", "sweep has no device option"),
                                                   ("skipped", "merge has no device option")]


def test_a_part_in_its_own_process_returns_its_numbers(tmp_path):
    """Outside --inline each part runs in a child Python; its numbers come back through the result file."""
    ctx = gpu_check_models.Context(dry_run=True, workdir=str(tmp_path))
    res = gpu_check.run_in_child(gpu_check.BY_KEY["d"], ctx, timeout=300)
    assert res.status == "ok", (res.reason, res.log_tail)
    assert res.numbers["items"] == 16 and 0 <= res.numbers["agreement"] <= 1


def test_a_part_that_overruns_is_cut_and_reported(tmp_path):
    """A part still running when its time is up is killed (with its process group) and reported out of time."""
    ctx = gpu_check_models.Context(dry_run=True, workdir=str(tmp_path))
    res = gpu_check.run_in_child(gpu_check.BY_KEY["d"], ctx, timeout=1)
    assert (res.status, res.reason) == ("skipped", "out of time: cut after 1 s (budget 45 s)")


def test_parts_past_the_deadline_are_reported_out_of_time(tmp_path):
    """With the global deadline spent, no part starts: each is reported out of time, and the JSON is still written."""
    report = gpu_check.main(["--dry-run", "--deadline", "0", "--parts", "d,f", "--json", str(tmp_path / "c.json")])
    assert [(p["part"], p["status"], p["reason"]) for p in report["parts"]] == [
        ("d", "skipped", "out of time: 0 s left of the 0 s deadline"),
        ("f", "skipped", "out of time: 0 s left of the 0 s deadline")]
    assert json.loads((tmp_path / "c.json").read_text())["parts"] == report["parts"]
