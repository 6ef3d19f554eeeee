"""The documentation runs: the site builds with ``mkdocs build --strict`` (a broken link or
anchor, an unknown generated table, an API name that no longer exists fail), and every
command and code block in docs/ and the README is checked against the code:

- every ``optuna-search`` command (in a ``bash`` block, or inline in the text) is parsed
  by the CLI's own parser (a stale flag fails) and, when it takes a configuration, the
  configuration is built from its preset, file and ``--set`` values (a renamed key or a
  preset that is gone fails);
- every shell and Python block *runs*, page by page in the page's order, in a folder that
  holds what the Quickstart leaves (the demo study, `run --preset demo`) and the reader's
  own input files; a block that cannot run here has a marker line right above it that
  says why (``<!-- not run here: REASON -->``: it needs a GPU, Kaggle, a server or a
  hub, serves until stopped, installs, or another test runs it as written), and its
  commands are parsed and built instead; ``<!-- run in miniature: REASON -->`` runs the
  block with ``MINIATURE`` appended (the search demo: two points, 64 reports, one epoch);
- TOML blocks are read as configuration files and built.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_main

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(optuna-search [^`]+)`")
PLACEHOLDER = re.compile(r"^(\.\.\.|…|[A-Z][A-Z_]*(\[.*\])?|section\.key=value|<.*>)$")
BUILDS_CONFIG = {"run", "validate", "show-config"}
"""The commands that build a whole configuration; the others read where a study lives."""
MINIATURE = [
    "--set",
    "study.grid={lora_r=[4, 8]}",
    "--set",
    "data.train_samples=64",
    "--set",
    "train.epochs=1",
    "--set",
    "eval.num_samples=20",
    "--set",
    "eval.validation_samples=20",
]
"""What a documented search `run` trains with here: the same command, two points, a
handful of steps (its preset's schedule, rungs and samplers as written)."""
RUN_ELSEWHERE = {"your-data.md": "tests/test_your_data.py runs its commands as written, in order, where its files are"}
"""Pages whose shell blocks another test runs whole (their commands need their own files)."""


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def commands(code: str) -> list[str]:
    """The logical lines of a shell block: continuations joined, comments dropped."""
    out = []
    for raw in code.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def argv_of(line: str) -> list[str] | None:
    """The arguments of an `optuna-search` command line (None: not one)."""
    words = shlex.split(line, comments=True)
    for prefix in (["optuna-search"], [".venv/bin/optuna-search"], ["!optuna-search"]):
        if words[: len(prefix)] == prefix:
            return words[len(prefix) :]
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    """Full command lines from the pages' bash and Python blocks."""
    found = []
    for page in PAGES:
        for lang, code in blocks(page):
            if lang in ("bash", "python"):
                for line in commands(code):
                    for part in line.split("&&"):
                        argv = argv_of(part.strip().lstrip("!"))
                        if argv is not None:
                            found.append((page.name, argv))
    return found


def mentioned_commands() -> list[tuple[str, list[str]]]:
    """Commands named inline in the text (often with placeholders: ``--input FILE``)."""
    found = []
    for page in PAGES:
        for m in INLINE.finditer(FENCE.sub("", page.read_text())):
            argv = argv_of(m.group(1).replace("[", " ").replace("]", " ").replace("|", " "))
            if argv:
                found.append((page.name, argv))
    return found


@functools.cache
def _subcommands() -> dict[str, Any]:
    """The CLI's commands and their parsers."""
    from optuna_search.search.front._cli import build_parser

    return next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices


def _flags_of(command: str) -> set[str]:
    parser = _subcommands().get(command)
    return set() if parser is None else {o for a in parser._actions for o in a.option_strings}


def _check(argv: list[str]) -> None:
    """Parse as the CLI does; build the configuration where the command takes one."""
    from optuna_search.core import UserError
    from optuna_search.search.front._cli import _flag_overrides, build_parser, resolve_config
    from optuna_search.search.front._config import config_layers, explicit_location

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`optuna-search {shlex.join(argv)}` does not parse (exit {e.code})") from None
    if any(PLACEHOLDER.match(a) for a in argv) or not hasattr(args, "sets"):
        return
    try:
        if args.command in BUILDS_CONFIG:
            resolve_config(args)
        else:  # a reading command needs only where the study lives (a remote is not pulled here)
            explicit_location(config_layers(args.preset, args.config, args.sets, _flag_overrides(args)).merged)
    except UserError as e:
        raise AssertionError(f"`optuna-search {shlex.join(argv)}`: {e}") from None


def test_every_command_named_in_the_text_exists_with_its_flags():
    found = mentioned_commands()
    assert len(found) > 30, found  # the pages' commands are found at all
    problems = []
    for page, argv in found:
        if argv[0].startswith("-"):
            continue  # `optuna-search --version`
        flags = _flags_of(argv[0])
        if not flags:
            problems.append(f"{page}: `optuna-search {argv[0]}`: no such command")
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("-") and a.split("=")[0] not in flags]
        if bad:
            problems.append(f"{page}: `optuna-search {shlex.join(argv)}`: {', '.join(bad)} not a flag of {argv[0]}")
    assert not problems, "\n".join(problems)


def test_every_documented_command_parses_and_builds_its_configuration():
    found = documented_commands()
    assert len(found) > 15, found  # the pages' commands are found at all
    problems = []
    for page, argv in found:
        try:
            if page in RUN_ELSEWHERE:
                continue  # run as written, where its files are
            _check(argv)
        except AssertionError as e:
            problems.append(f"{page}: {e}")
    assert not problems, "\n".join(problems)


def test_the_site_builds_strict(tmp_path):
    # As on CI's clean checkout: the API reference's source tree does not exist yet (the
    # hook makes it; a tree left by an earlier build once hid that it came too late).
    shutil.rmtree(REPO / "build" / "docs-src", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_quiet_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    import optuna_search

    missing = [n for n in optuna_search.__all__ if f'id="optuna_search.{n}"' not in api]
    assert not missing, f"public names without a section in the API reference: {missing}"
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text()
    from optuna_search.core import SECTIONS

    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert all(f"<code>{k}</code>" in reference for k in keys), "a configuration key is missing from the reference"
    # Types by name and defaults as a configuration file writes them (seen: "<class 'str'>",
    # a table default as "[x]", study.grid as "[4, 8, 16]" without its key).
    assert "&lt;class" not in reference and "<code>[x]</code>" not in reference
    assert "<code>{ lora_r = [4, 8, 16] }</code>" in reference
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for command in _subcommands():
        shown = [", ".join(a.option_strings) for a in _subcommands()[command]._actions if a.help != "==SUPPRESS=="]
        assert f"optuna-search {command}</code>" in cli, command
        assert all(f"<code>{f}" in cli for f in shown if f != "-h, --help"), command
    from optuna_search.search.loop import _exit

    codes = [v for k, v in vars(_exit).items() if k.startswith("EXIT_")]
    assert all(f"<td>{c}</td>" in cli for c in codes), "an exit code is missing from the CLI reference"


def _hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_troubleshooting_quotes_messages_the_code_gives():
    """The page's explained refusals are the code's own messages (``…``: a value filled in
    at run time), so a reworded message fails here rather than leaving the page stale; and
    its catalogue lists every refusal the code has."""
    hooks = _hooks()
    messages = {text for found in hooks.refusals().values() for text, _ in found}
    quoted = re.findall(r"^> (.+)$", (DOCS / "troubleshooting.md").read_text(), re.M)
    assert len(quoted) >= 8
    stale = [q for q in quoted if not any(m == q or m.startswith(q) for m in messages)]
    assert not stale, f"quoted on the page but given by no code: {stale}"
    catalogue = hooks.refusal_catalogue()
    assert sum(len(found) for found in hooks.refusals().values()) > 150 and "storage.url" in catalogue


def _quiet_env() -> dict:
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def test_the_readme_stays_an_overview_with_the_two_quickstart_commands():
    text = (REPO / "README.md").read_text()
    assert text.count("\n") <= 200
    (quickstart,) = [code for lang, code in blocks(REPO / "README.md") if lang == "bash"]
    assert commands(quickstart) == [
        "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/optuna-search run --preset demo",
        "bash .ci/run",
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert "-m pytest -q -ra -n auto --maxprocesses 4 --dist worksteal" in ci
    assert {f"`optuna-search {c}`" for c in _subcommands()} <= set(re.findall(r"`optuna-search [\w-]+`", text))


# -- running the pages' commands on the tests' study ---------------------------------------
def _inputs(folder: Path) -> None:
    """The files the pages' commands read: new reports, as JSONL and CSV."""
    import csv

    from optuna_search.objectives import ensure_demo_data

    rows = [json.loads(line) for line in (ensure_demo_data() / "test.jsonl").read_text().splitlines()[:12]]
    for name in ("new-reports.jsonl", "new.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(folder / "new.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


MARKED = re.compile(
    r"(?:^<!-- (not run here|run in miniature): (.+?) -->\n(?:[ \t]*\n)*)?^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M
)
"""A block, and the marker line right above it that says why the tests do not run it as
written (``not run here: REASON``: it needs a GPU, Kaggle, a server, or another test runs
it) or run it smaller (``run in miniature: REASON``: ``MINIATURE`` is appended)."""


def marked_blocks(page: Path) -> list[tuple[str, str, str | None, str]]:
    """(language, code, marker kind or None, the marker's reason)."""
    return [(m.group(3), m.group(4), m.group(1), m.group(2) or "") for m in MARKED.finditer(page.read_text())]


def _shell_env(home: Path) -> dict[str, str]:
    """A reader's shell: the installed commands on PATH, a home of its own."""
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }


def _not_run(page: str, lang: str, code: str) -> None:
    """A block the tests do not run: its commands still parse and build their configuration."""
    if lang == "python":
        python = [line for line in code.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("!")]
        compile("\n".join(python), page, "exec")
        return
    for line in commands(code):
        for part in line.split("&&"):
            argv = argv_of(part.strip())
            if argv is not None and page not in RUN_ELSEWHERE:
                _check(argv)
        proc = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
        assert proc.returncode == 0, f"{page}: {line}: {proc.stderr}"


@pytest.mark.parametrize(
    "page", [p.name for p in PAGES if any(lang in ("bash", "python", "toml") for lang, _ in blocks(p))]
)
def test_a_pages_blocks_run(page, demo_study, tmp_path, monkeypatch):
    """Every shell and Python block of the page, in the page's order, in a folder that holds
    what the Quickstart leaves (the demo study) and the reader's own input files
    (``_inputs``); a block that cannot run here says why in a marker line above it, and its
    commands are parsed and their configurations built instead."""
    path = REPO / page if page == "README.md" else DOCS / page
    work = tmp_path / "work"
    shutil.copytree(demo_study[0], work)  # the Quickstart's demo study, as a reader has it after the Quickstart
    _inputs(work)
    env = _shell_env(tmp_path / "home")
    ran: list[str] = []
    for lang, code, marker, reason in marked_blocks(path):
        if lang == "toml":
            from optuna_search.search import load_config

            (work / "block.toml").write_text(code)
            load_config(config_file=str(work / "block.toml"))
            continue
        if lang not in ("bash", "python"):
            continue
        if marker == "not run here":
            assert len(reason.split()) >= 3, f"{page}: a block not run says why"
            _not_run(page, lang, code)
            continue
        if lang == "python":
            monkeypatch.chdir(work)
            exec(compile(code, page, "exec"), {})
            ran.append("python")
            continue
        for line in commands(code):
            argv = argv_of(line)
            if argv is not None and "&&" not in line:
                if marker == "run in miniature":
                    argv = [*argv, "--study-name", f"docs-{path.stem}", *MINIATURE]
                proc = run_main(*argv, cwd=work)
                ran.append(argv[0])
            else:
                proc = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True)
                ran.append(line.split()[0])
            assert proc.returncode == 0, f"{page}: `{line}` exit {proc.returncode}:\n{proc.stderr[-2000:]}"
    if page == "using-the-winner.md":
        assert ran.count("predict") >= 3 and "export-model" in ran and "ensemble" in ran, ran
        assert (work / "triage.jsonl").stat().st_size > 0 and (work / "triage.csv").stat().st_size > 0
    if page == "inspecting.md":
        assert "report" in ran, ran
    if page == "files.md":  # the page's cleanup removed what it says a study wrote
        assert "optuna" in ran and "rm" in ran, ran
        assert not [p.name for p in work.iterdir() if p.name.startswith("optuna-search-")]
    if page == "search.md":
        assert "run" in ran, ran  # the search demo trained, to its end
