"""The command line: commands listed, help generated from config docs, clean errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def medtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtune", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    out = medtune("--help")
    assert out.returncode == 0
    for name in ("data", "model", "demo"):
        assert name in out.stdout
    data = medtune("data", "--help").stdout
    assert "stats" in data and "build" in data


def test_command_help_comes_from_field_docstrings():
    out = medtune("data", "stats", "--help").stdout
    assert "--general-share FLOAT" in out
    assert "Target share of general (replay) tokens" in " ".join(out.split())
    assert "fixed_share|temperature|concat" in out
    assert "--base-dir" not in out  # internal fields are not options
    assert "Set in CONFIG only" in out and "train:" in out  # list fields are documented too


def test_errors_are_one_clean_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  - adapter: nope\n    path: x\n")
    out = medtune("data", "stats", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "train.0" in out.stderr and "nope" in out.stderr and "pubmedqa" in out.stderr


def test_missing_file_names_it(tmp_path, tiny_llama):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"tokenizer: {tiny_llama}\ntrain:\n  - adapter: medmcqa\n    path: {tmp_path}/missing.jsonl\n")
    out = medtune("data", "stats", str(cfg))
    assert out.returncode == 2 and "missing.jsonl" in out.stderr


def test_tables_written_to_a_log_are_not_cut_at_80_columns(tmp_path, tiny_llama):
    """Piped output (a log) lays rich's tables out wide, so no column is cut to '…'."""
    cfg = tmp_path / "data.yaml"
    long_name = "a_source_with_a_long_name_that_a_narrow_table_would_cut"
    cfg.write_text(f"data_root: {FIXTURES}\ntokenizer: {tiny_llama}\n"
                   f"train: [{{adapter: pubmedqa, name: {long_name}, path: pubmedqa/ori_pqal.json}}]\n")
    done = medtune("data", "stats", str(cfg))
    assert done.returncode == 0, done.stderr
    assert long_name in done.stdout and "…" not in done.stdout
