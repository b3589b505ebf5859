"""MkDocs hooks (MkDocs' native ``hooks:``, no plugin): the reference pages are generated from the code at
build time, so they cannot drift from it.

A page asks for a generated part with a marker line ``<!-- generated: NAME -->``; ``on_page_markdown``
replaces it with the output of ``GENERATORS[NAME]``. An unknown name fails the build. ``on_files`` adds
``reference/openapi.json`` (the worker's OpenAPI document as ``GET /openapi.json`` serves it) and the record
schemas as ``reference/schemas/*.json``, so pages link to the files themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: ([a-z_]+) -->$", re.MULTILINE)


def _cell(text: str) -> str:
    """One Markdown table cell: pipes escaped, newlines folded."""
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    from stream_app.settings import env_table

    rows = [f"| `{name}` | {f'`{default}`' if default else '(empty)'} | {_cell(doc)} |"
            for name, default, doc in env_table()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def cli_help() -> str:
    from stream_app.cli import build_parser

    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal width: fix it so the page is stable
    parts: list[str] = []

    def page(prog: str, parser: argparse.ArgumentParser) -> None:
        """This parser's help, then each subcommand's (`stream-app rules validate` too)."""
        parts.extend(["", f"## {prog}", "", "```text", parser.format_help().rstrip(), "```"])
        # argparse has no public way to list a parser's subcommands
        for action in parser._actions:  # noqa: SLF001
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, command in action.choices.items():
                    page(f"{prog} {name}", command)

    page("stream-app", build_parser())
    return "\n".join(parts[1:])


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "oneOf" in prop:
        return " or ".join(_type(p) for p in prop["oneOf"])
    kind = prop.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if "format" in prop:
        text += f" ({prop['format']})"
    if kind == "array" and "items" in prop:
        text += " of " + _type(prop["items"])
    bounds = [f"{word} {prop[key]}" for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                     ("maximum", "≤"), ("exclusiveMaximum", "<"))
              if key in prop]
    if "pattern" in prop:
        bounds.append(f"`{prop['pattern']}`")
    return text + (", " + ", ".join(bounds) if bounds else "")


def records() -> str:
    parts: list[str] = []
    for path in sorted((ROOT / "schemas").glob("*.schema.json")):
        schema = json.loads(path.read_text())
        required = set(schema.get("required", []))
        parts += [f"## {schema['title']}", "", f"`schemas/{path.name}`: {schema.get('description', '')}", "",
                  "| field | type | required | meaning |", "|---|---|---|---|"]
        parts += [f"| `{name}` | {_cell(_type(prop))} | {'yes' if name in required else ''} | "
                  f"{_cell(prop.get('description', ''))} |" for name, prop in schema["properties"].items()]
        extra = schema.get("additionalProperties", True)
        parts += ["", "Other fields: " + ("ignored." if extra is not False else "not allowed."), ""]
    return "\n".join(parts)


def _openapi() -> dict[str, Any]:
    from stream_app.worker.http import BearerAuth, openapi_document

    return openapi_document(BearerAuth("documented"))  # with a token: the 401s and the security scheme shown


def http_pages() -> str:
    doc = _openapi()
    parts = [_cell(doc["info"]["description"]), ""]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            public = op.get("security") == []
            parts += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), "",
                      "Public (no token)." if public else "Needs the bearer token when one is configured.", "",
                      "| status | answer |", "|---|---|"]
            parts += [f"| {code} | {_cell(resp.get('description', ''))} |"
                      for code, resp in op.get("responses", {}).items()]
            parts.append("")
    return "\n".join(parts)


def metrics_table() -> str:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from stream_app.worker.metrics import ROLES, Metrics

    families: dict[str, Any] = {}  # by name, in the worker's order, then the door's own
    exposed_by: dict[str, list[str]] = {}
    labels: dict[str, tuple[str, ...]] = {}
    for role in ROLES:
        registry = CollectorRegistry()
        metrics = Metrics(registry, role)
        # prometheus-client has no public accessor for a family's label names (only its children's samples)
        labels |= {m._name: m._labelnames for m in vars(metrics).values()  # noqa: SLF001
                   if isinstance(m, MetricWrapperBase)}
        for family in registry.collect():
            families.setdefault(family.name, family)
            exposed_by.setdefault(family.name, []).append(f"`stream-app {role}`")
    suffix = {"counter": "_total", "info": "_info"}
    rows = [f"| `{family.name}{suffix.get(family.type, '')}` | {family.type} | "
            f"{', '.join(f'`{n}`' for n in labels.get(family.name, ()))} | {' and '.join(exposed_by[family.name])} | "
            f"{_cell(family.documentation)} |"
            for family in families.values()]
    return "\n".join(["| metric | type | labels | exposed by | meaning |", "|---|---|---|---|---|", *rows])


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings_table, "cli": cli_help, "records": records, "http": http_pages, "metrics": metrics_table}


def on_page_markdown(markdown: str, page: Page, **_: Any) -> str:
    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: no generator named {name!r} (known: {sorted(GENERATORS)})")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(_openapi(), indent=2)))
    for path in sorted((ROOT / "schemas").glob("*.schema.json")):
        files.append(File.generated(config, f"reference/schemas/{path.name}", abs_src_path=str(path)))
    return files
