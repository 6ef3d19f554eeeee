"""MkDocs hook: the tables that the code already holds are generated from it, never
written twice. A page names a table with a marker line:

- ``<!-- generated: config-reference -->``: every configuration key (the sections of
  ``core._schema``: type, default, the field's docstring);
- ``<!-- generated: hyperparameters -->``: the searchable hyperparameters (the
  ``HYPERPARAMETERS`` table: config key, default, what it sets in peft / Trainer);
- ``<!-- generated: presets -->``: the presets and their descriptions;
- ``<!-- generated: commands -->``: the CLI's commands and their help lines.

``tests/test_docs.py`` builds the site with ``mkdocs build --strict`` and checks the
generated tables against the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import shutil
import typing
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

REPO = Path(__file__).resolve().parents[1]

MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.MULTILINE)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right below a field), as peft configs write them."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
        if field and doc:
            docs[node.target.id] = " ".join(nxt.value.value.split())  # type: ignore[attr-defined]
    return docs


def _toml(value: Any) -> str:
    from optuna_search.core import to_toml

    text = to_toml({"x": value}).strip()
    return text.split("=", 1)[1].strip() if "=" in text else text


def _type(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    return f"`{annotation}`".replace("typing.", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    from optuna_search.core import SECTIONS

    out = []
    for section, cls in SECTIONS.items():
        docs = _field_docs(cls)
        hints = typing.get_type_hints(cls)
        out += [f"### `[{section}]`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append(
                f"| `{section}.{f.name}` | {_type(hints[f.name])} | `{_cell(_toml(default))}` | {_cell(docs.get(f.name, ''))} |"
            )
        out.append("")
    return "\n".join(out)


def hyperparameters() -> str:
    from optuna_search.core import HYPERPARAMETERS, build_config

    defaults = build_config({"data": {"train": "t.jsonl", "validation": "v.jsonl", "test": "t.jsonl"}})
    out = ["| hyperparameter | config key | default | sets | meaning |", "|---|---|---|---|---|"]
    for h in HYPERPARAMETERS:
        section, key = h.config.split(".")
        value = getattr(getattr(defaults, section), key)
        sets = [f"`LoraConfig.{k}`" for k in h.peft] + [f"`{k}`" for k in h.trainer]
        out.append(f"| `{h.name}` | `{h.config}` | `{_cell(_toml(value))}` | {', '.join(sets)} | {_cell(h.doc)} |")
    return "\n".join(out) + "\n"


def _first_sentence(toml_text: str) -> str:
    """The first sentence of a preset's leading comment block."""
    lines = []
    for line in toml_text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    m = re.match(r"(.+?\.)(\s|$)", text)
    return m.group(1) if m else text


def presets() -> str:
    from importlib import resources

    out = ["| preset | what it is |", "|---|---|"]
    for path in sorted(resources.files("optuna_search.search.presets").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".toml"):
            out.append(f"| `{path.name[:-5]}` | {_cell(_first_sentence(path.read_text()))} |")
    return "\n".join(out) + "\n"


def commands() -> str:
    from optuna_search.search.front import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out = ["| command | what it does |", "|---|---|"]
    for choice in sub._choices_actions:  # type: ignore[attr-defined]
        out.append(f"| `optuna-search {choice.dest}` | {_cell(choice.help or '')} |")
    return "\n".join(out) + "\n"


TABLES = {
    "config-reference": config_reference,
    "hyperparameters": hyperparameters,
    "presets": presets,
    "commands": commands,
}


def render(markdown: str) -> str:
    def table(m: re.Match) -> str:
        name = m.group(1)
        if name not in TABLES:
            raise ValueError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return TABLES[name]()

    return MARKER.sub(table, markdown)


def source_tree(root: Path) -> Path:
    """The package laid out as it installs (``search/api`` is ``optuna_search`` itself, each
    top folder a subpackage), as symbolic links under ``root``: what the API reference's
    collector reads (an editable install's mapping is invisible to it)."""
    pkg = root / "optuna_search"
    shutil.rmtree(root, ignore_errors=True)
    pkg.mkdir(parents=True)
    for path in (REPO / "search" / "api").iterdir():
        (pkg / path.name).symlink_to(path)
    for name in ("core", "storage", "objectives", "dashboards", "search"):
        (pkg / name).symlink_to(REPO / name)
    return root


@event_priority(100)
def on_config(config: Any, **_: Any) -> Any:
    # Before mkdocstrings' own on_config (priority 0), which drops search paths that do
    # not exist yet: on a clean checkout the tree must be there when it looks.
    source_tree(REPO / "build" / "docs-src")
    return config


def on_page_markdown(markdown: str, **_: Any) -> str:
    return render(markdown)
