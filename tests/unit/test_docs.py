"""The documentation site builds strictly, its generated reference pages cover the code, and the code's
pointers into the docs and the README lead somewhere.

The site is built once per module (``mkdocs build --strict``: a broken link, anchor or nav entry fails);
the reference checks read the built HTML, so they test what a reader gets, not the generator alone.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _page(site: Path, name: str) -> str:
    """The text of a built page, tags kept, entities decoded (so `a < b` and `&lt;` compare equal)."""
    return html.unescape((site / name / "index.html").read_text())


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file() and (site / "concepts" / "delivery" / "index.html").is_file()


def test_settings_page_lists_every_variable_with_its_default(site: Path) -> None:
    from stream_app.settings import env_table

    page = _page(site, "reference/settings")
    rows = env_table()
    assert len(rows) > 40
    missing = [name for name, default, _doc in rows
               if f"<code>{name}</code>" not in page or (default and f"<code>{default}</code>" not in page)]
    assert not missing


def test_cli_page_has_every_subcommand_and_flag(site: Path) -> None:
    from stream_app.cli import build_parser

    page = _page(site, "reference/cli")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {flag}" for name, command in sub.choices.items()
               for flag in [f"stream-app {name}", *(s for a in command._actions for s in a.option_strings)]
               if flag not in page]
    assert len(sub.choices) >= 7 and not missing


def test_records_page_has_every_schema_field(site: Path) -> None:
    page = _page(site, "reference/records")
    schemas = [json.loads(p.read_text()) for p in sorted((ROOT / "schemas").glob("*.schema.json"))]
    missing = [f"{s['title']}.{field}" for s in schemas for field in s["properties"]
               if f"<code>{field}</code>" not in page]
    assert len(schemas) == 5 and "<h2 id=\"transaction\">Transaction" in page.replace("\n", "") and not missing


def test_http_page_and_openapi_file_match_the_worker(site: Path) -> None:
    from stream_app.worker.http import BearerAuth, openapi_document

    doc = openapi_document(BearerAuth("documented"))
    assert json.loads((site / "reference" / "openapi.json").read_text()) == doc
    page = _page(site, "reference/http")
    missing = [f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops
               if f"<code>{m.upper()} {p}</code>" not in page]
    assert not missing


def test_metrics_page_lists_every_metric(site: Path) -> None:
    from prometheus_client import CollectorRegistry

    from stream_app.worker.metrics import ROLES, Metrics

    page = _page(site, "reference/metrics")
    for role in ROLES:
        registry = CollectorRegistry()
        Metrics(registry, role)
        names = [m.name for m in registry.collect()]
        assert len(names) > 15 and not [n for n in names if f"<code>{n}" not in page], role


def _deployment_files() -> list[Path]:
    return [*sorted((ROOT / "k8s").rglob("*.yaml")), *sorted((ROOT / "monitoring").rglob("*.yml")),
            ROOT / "docker-compose.yml", ROOT / "Dockerfile"]


def _code_files() -> list[Path]:
    return [*(p for folder in ("stream_app", "tests", "benchmarks", "loadtests")
              for p in sorted((ROOT / folder).rglob("*.py"))), *_deployment_files()]


def test_docs_pages_named_in_the_code_exist() -> None:
    named = {(p.relative_to(ROOT), m) for p in _code_files()
             for m in re.findall(r"\bdocs/[\w./-]+?\.md\b", p.read_text())}
    missing = sorted(f"{p}: {m}" for p, m in named if not (ROOT / m).is_file())
    assert not missing


def _readme_sections() -> set[str]:
    return {ln.lstrip("#").strip() for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("## ")}


def test_code_names_only_readme_sections_that_exist() -> None:
    """A mention of the README in the package or the deployment files must name one of its sections in
    quotes (README "Quickstart"); the reference, how-to and explanations are in docs/ now."""
    sections = _readme_sections()
    stale = []
    for path in [*sorted((ROOT / "stream_app").rglob("*.py")), *_deployment_files()]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "README" not in line.replace("README.md", ""):  # the file itself (COPY, shared/README.md)
                continue
            named = re.findall(r'"([^"]+)"', line)
            if not named or not all(n in sections for n in named):
                stale.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not stale, "point these at docs/ pages:\n" + "\n".join(stale)


def test_quickstart_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(ln for ln in ci if ln.startswith("python3 -m venv"))
    assert command in (ROOT / "README.md").read_text().splitlines()
    assert command in (ROOT / "docs" / "index.md").read_text().splitlines()
