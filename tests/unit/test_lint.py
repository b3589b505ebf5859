"""ruff and mypy, with the configuration in pyproject.toml, as tests: CI runs them through pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff() -> None:
    out = _run("ruff", "check", "--no-cache", "stream_app", "tests", "benchmarks", "loadtests")
    assert out.returncode == 0, f"ruff check found problems:\n{out.stdout}{out.stderr}"


#: where each framework's internals may be touched: one module per framework
FENCES = {"stream_app/kafka/compat.py": "faust", "stream_app/models/river_batch.py": "River (a model's weights)"}


def test_noqa_slf001_only_in_the_fences() -> None:
    """Private access of framework internals is fenced, one module per framework (tests may touch privates)."""
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "stream_app").rglob("*.py"))
                 if str(path.relative_to(ROOT)) not in FENCES
                 for n, line in enumerate(path.read_text().splitlines(), 1) if "SLF001" in line]
    assert not offenders, f"`noqa: SLF001` outside {sorted(FENCES)}: {offenders}"


def test_mypy() -> None:
    out = _run("mypy", "stream_app")
    assert out.returncode == 0, f"mypy found problems:\n{out.stdout}{out.stderr}"
