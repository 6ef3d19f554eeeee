"""MkDocs hook: the tables that the code already holds are generated from it, never
written twice. A page names a table with a marker line:

- ``<!-- generated: config-reference -->``: every configuration key (the sections of
  ``core._schema``: type, default, the field's docstring);
- ``<!-- generated: hyperparameters -->``: the searchable hyperparameters (the
  ``HYPERPARAMETERS`` table: config key, default, what it sets in peft / Trainer);
- ``<!-- generated: presets -->``: the presets and their descriptions;
- ``<!-- generated: commands -->``: the CLI's commands and their help lines;
- ``<!-- generated: cli-reference -->``: every command with its flags, defaults and help
  (the parser's own);
- ``<!-- generated: exit-codes -->``: the exit codes (``search/loop/_exit.py``);
- ``<!-- generated: refusals -->``: every refusal's message (each ``UserError`` the
  product code raises with a written message), by area.

``tests/test_docs.py`` builds the site with ``mkdocs build --strict`` and checks the
generated tables against the code.
"""

from __future__ import annotations

import argparse
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


def _attribute_docs(body: list[ast.stmt]) -> dict[str, str]:
    """Attribute docstrings (the string right below a name it documents, as peft configs
    and our constants write them) in a class or module body: name -> text."""
    docs = {}
    for node, nxt in itertools.pairwise(body):
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
        if isinstance(target, ast.Name) and doc:
            docs[target.id] = " ".join(nxt.value.value.split())  # type: ignore[attr-defined]
    return docs


def _field_docs(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings."""
    return _attribute_docs(ast.parse(inspect.getsource(cls)).body[0].body)  # type: ignore[attr-defined]


def _toml(value: Any) -> str:
    """A value as it is written in a configuration file (a table inline, as a key's value)."""
    from optuna_search.core import to_toml

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return to_toml({"x": value}).strip().split("=", 1)[1].strip()


def _type(annotation: Any) -> str:
    """A field's type by name: ``str``, ``list[float]``, or a literal's choices."""
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    name = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return f"`{name}`".replace("typing.", "")


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


def _subcommands() -> Any:
    """The CLI parser's subcommands action (its ``choices``: name -> parser)."""
    from optuna_search.search.front import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))


def commands() -> str:
    sub = _subcommands()
    out = ["| command | what it does |", "|---|---|"]
    for choice in sub._choices_actions:  # type: ignore[attr-defined]
        out.append(f"| `optuna-search {choice.dest}` | {_cell(choice.help or '')} |")
    return "\n".join(out) + "\n"


def _flag_default(action: Any) -> str:
    if action.nargs == 0 or action.default in (None, "", [], False) or action.default is argparse.SUPPRESS:
        return ""
    return f"`{action.default}`"


def cli_reference() -> str:
    """Every command of the parser: its help line, its usage, and a table of its flags
    (default and help), as argparse holds them."""
    sub = _subcommands()
    helps = {c.dest: c.help or "" for c in sub._choices_actions}  # type: ignore[attr-defined]
    out = []
    for name, command in sub.choices.items():
        out += [f"### `optuna-search {name}`", "", _cell(helps.get(name, "")), ""]
        rows = []
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flag = ", ".join(action.option_strings) or action.dest
            value = f" {action.metavar or action.dest.upper()}" if action.option_strings and action.nargs != 0 else ""
            text = (action.help or "") % {"default": action.default} if action.help else ""
            rows.append(f"| `{flag}{value}` | {_flag_default(action)} | {_cell(text)} |")
        if rows:
            out += ["| flag | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def exit_codes() -> str:
    """The exit codes, from ``search/loop/_exit.py`` (a constant and its docstring)."""
    from optuna_search.search.loop import _exit

    docs = _attribute_docs(ast.parse(inspect.getsource(_exit)).body)
    rows = [f"| {getattr(_exit, name)} | {_cell(text)} |" for name, text in docs.items()]
    return "\n".join(["| exit code | meaning |", "|---|---|", *rows]) + "\n"


AREAS = {
    "core": "Configuration",
    "objectives": "Data, prompt and model",
    "storage": "Study database, checkpoints and remote",
    "dashboards": "Reports and dashboard",
    "search": "Commands, study runs, prediction and export",
}


def _message(node: ast.expr) -> str | None:
    """A message as the code writes it; a value filled in at run time is ``…``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)  # type: ignore[misc]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _message(node.left), _message(node.right)
        return None if left is None or right is None else left + right
    return None


def refusals() -> dict[str, list[tuple[str, str]]]:
    """Every refusal in the product code (a ``UserError`` raised with a written message, or
    a problem added to the list that one raises), per area: (message, module)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for area in AREAS:
        for path in sorted((REPO / area).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                refusal = getattr(node, "func", None) is not None and (
                    getattr(node.func, "id", None) == "UserError"  # type: ignore[attr-defined]
                    # A problem of a list raised together (a config's checks, a data file's rows).
                    or (
                        getattr(node.func, "attr", None) == "append"  # type: ignore[attr-defined]
                        and getattr(node.func.value, "id", None) in ("p", "problems")  # type: ignore[attr-defined]
                    )
                )
                if isinstance(node, ast.Call) and refusal and node.args:
                    text = _message(node.args[0])
                    if text and sum(c.isalpha() for c in text) >= 12:  # a message, not only a value
                        text = re.sub("…+", "…", " ".join(text.split()))
                        out.setdefault(area, []).append((text, str(path.relative_to(REPO))))
    return out


def refusal_catalogue() -> str:
    """The troubleshooting page's catalogue: every refusal's message, by area."""
    out = []
    for area, found in refusals().items():
        out += [f"### {AREAS[area]}", "", "| the message (`…`: filled in at run time) | raised in |", "|---|---|"]
        out += [f"| {_cell(text).replace('`', '')} | `{module}` |" for text, module in sorted(set(found))]
        out.append("")
    return "\n".join(out)


TABLES = {
    "config-reference": config_reference,
    "hyperparameters": hyperparameters,
    "presets": presets,
    "commands": commands,
    "cli-reference": cli_reference,
    "exit-codes": exit_codes,
    "refusals": refusal_catalogue,
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
