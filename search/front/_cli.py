"""`optuna-search` command line: parse, then call the Python API's functions. Heavy
libraries (torch, transformers, peft, optuna) are imported inside the functions that need
them, never at module import, so ``--help`` is instant.

Exit codes (``_exit``): 0 study complete / command succeeded, 1 study incomplete (a point
failed; `status` of a study not yet complete), 2 bad input (message names the problem
and the fix; nothing written), 3 time budget reached (resume in a new session with the
same command), 4 disk full (free space, same command), 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from optuna_search.core import Config, StorageSection, StudyLocation, UserError, disk_full, to_toml
from optuna_search.dashboards import (
    check_host,
    check_port,
    collect_report,
    render_markdown,
    serve_dashboard,
    write_report,
)
from optuna_search.objectives import prefer_expandable_segments, quiet_libraries
from optuna_search.search.front._config import config_layers, explicit_location, load_config
from optuna_search.search.front._request import RUN_OPTIONS, RunRequest, execute, parse_duration
from optuna_search.search.front._status import status
from optuna_search.search.front._summary import print_summary
from optuna_search.search.front._validate import validate
from optuna_search.search.loop import (
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    DiskFull,
    Terminated,
    handle_sigterm,
)
from optuna_search.search.remote import reading_location, write_through
from optuna_search.search.setup import open_for_reading
from optuna_search.search.use import (
    BAD_ROW_POLICIES,
    export_model,
    export_study_bundle,
    make_wheelhouse,
    predict_file,
    run_ensemble,
)
from optuna_search.storage import artifact_store, close_storages, redacted_config, supported

log = logging.getLogger("optuna_search")


def _version() -> str:
    try:
        return version("optuna-search")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _add_config_args(p: argparse.ArgumentParser, *, reading: bool = False) -> None:
    title = (
        "where the study lives (its own stored config says the rest)"
        if reading
        else "configuration (precedence: flags > --set > --config > --preset > defaults)"
    )
    g = p.add_argument_group(title)
    g.add_argument(
        "--preset",
        help="start from a shipped preset (see show-config --help): kaggle-t4, kaggle-t4-search, "
        "cpu-real, demo, demo-search",
    )
    g.add_argument("--config", metavar="FILE", help="TOML config file ('-': standard input)")
    g.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="sets",
        help="override one key, e.g. --set train.epochs=1 --set 'study.grid={lora_r=[8]}' (repeatable)",
    )
    g.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna-search.db)")
    g.add_argument("--study-name", help="study name (default from the config; a storage with one study needs none)")
    g.add_argument(
        "--remote",
        metavar="URL",
        help=f"the study's remote copy ({supported()}): "
        + (
            "read from it, nothing copied by hand"
            if reading
            else "pulled when this machine lacks it, pushed as it runs"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-search",
        description=(
            "Resumable Optuna studies (grid, TPE, GP, NSGA-II, brute force; pruning; successive halving over "
            "checkpoints; "
            "Pareto fronts) for LoRA/QLoRA fine-tuning of causal LMs, and the measured model they choose."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors on stderr")
    noise.add_argument("--verbose", "-v", action="store_true", help="debug lines too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_reading(sub)
    _add_using(sub)
    p = sub.add_parser("show-config", help="print the resolved configuration as TOML")
    _add_config_args(p)
    p.set_defaults(func=cmd_show_config)
    p = sub.add_parser(
        "validate", help="check data, labels, prompts and model before spending GPU time; print the baselines"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser(
        "wheelhouse",
        help="a folder of wheels that installs optuna-search with no index (an offline Kaggle session); torch left out",
    )
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="new folder for the wheels")
    p.add_argument(
        "--source",
        metavar="DIR",
        help="the source folder (default: where this install came from, e.g. /kaggle/input/optuna-search-src)",
    )
    p.add_argument(
        "--extra", action="append", default=[], metavar="NAME", help="also an extra's needs, e.g. s3 (repeatable)"
    )
    p.set_defaults(func=cmd_wheelhouse)
    return parser


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run what the study lacks: every grid point, or n_trials sampled trials")
    _add_config_args(p)
    p.add_argument(
        "--retry-failed", action="store_true", help="also re-run points whose last trial failed with an error"
    )
    p.add_argument(
        "--n-trials", type=int, metavar="N", help="finished trials that end a sampler study (extends a finished search)"
    )
    p.add_argument(
        "--time-budget",
        dest="time_budget_s",
        metavar="DURATION",
        type=parse_duration,
        help="session time budget, e.g. 11h30m: start no trial that cannot finish, checkpoint and stop before "
        "it ends (exit 3)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="parallel worker processes on this study, each pinned to its own GPU "
        "(default: one per visible GPU, 1 on CPU; capped at the GPUs, or the CPU cores without a GPU)",
    )
    p.add_argument("--oversubscribe", action="store_true", help="allow --workers above the machine's GPUs/cores")
    p.add_argument("--worker", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument(
        "--resume-from",
        metavar="BUNDLE",
        help="import a study bundle written by `export` (e.g. a read-only Kaggle input) into the working "
        "directory, then run",
    )
    p.add_argument(
        "--drop-damaged",
        action="store_true",
        help="a remote whose only damage is in the newest checkpoint of unfinished points: drop it (said); "
        "those points train again from their start",
    )
    p.add_argument(
        "--warm-start-from",
        metavar="URL[#STUDY]",
        help="a new study starts with the finished trials of an earlier one (same data and evaluation subsets)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines while training (default 10; 0: every step)",
    )
    p.set_defaults(func=cmd_run)


def _add_reading(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="per point: state, attempts, value, resumed step, rung; n of N trials, best, hours so far and ETA",
    )
    _add_config_args(p, reading=True)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "report", help="Markdown + HTML report: tables, baselines, significance, importances, recommendation"
    )
    _add_config_args(p, reading=True)
    p.add_argument(
        "--output",
        "-o",
        default="optuna-search-report",
        metavar="DIR",
        help="directory for report.md and report.html (default: optuna-search-report)",
    )
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard (127.0.0.1 unless --host)")
    _add_config_args(p, reading=True)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=cmd_dashboard)
    p = sub.add_parser("export", help="write a study bundle (database, checkpoints, artifacts, checksum manifest)")
    _add_config_args(p, reading=True)
    p.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="bundle directory to create (e.g. /kaggle/working/bundle)"
    )
    p.set_defaults(func=cmd_export)


def _add_using(sub: Any) -> None:
    p = sub.add_parser(
        "ensemble",
        help="soft/hard voting over trials from their stored predictions (no model, no GPU); stored on the study",
    )
    _add_config_args(p, reading=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trials", metavar="N,N,...", help="trial numbers, e.g. 0,1,2")
    which.add_argument(
        "--top",
        type=int,
        metavar="K",
        help="the K best trials by the study's objective (on its split; validation when stored)",
    )
    which.add_argument("--all", action="store_true", help="every COMPLETE trial")
    p.set_defaults(func=cmd_ensemble)
    p = sub.add_parser(
        "predict", help="label new reports with the study's best trial (or a trial, the ensemble, an exported model)"
    )
    _add_config_args(p, reading=True)
    p.add_argument("--input", "-i", required=True, metavar="FILE", help="JSONL or CSV with the study's text column")
    p.add_argument(
        "--output", "-o", required=True, metavar="FILE", help="JSONL (CSV when it ends in .csv); rerun to resume"
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument("--trial", default="best", metavar="best|N", help="the study's best trial (default) or trial N")
    model.add_argument(
        "--ensemble", action="store_true", help="the ensemble stored by `ensemble` (soft voting, one base model)"
    )
    model.add_argument("--model", metavar="DIR", help="a folder written by export-model (no study needed)")
    p.add_argument(
        "--on-bad-row",
        choices=BAD_ROW_POLICIES,
        default="skip",
        help="a row without text: skip it (reported with its line) or fail (default skip)",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="rows per batch (default: the trial's evaluation batch)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser(
        "export-model", help="a standalone folder with the trial's adapter, tokenizer, label sets and model card"
    )
    _add_config_args(p, reading=True)
    p.add_argument("--trial", default="best", metavar="best|N", help="the study's best trial (default) or trial N")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder to create (e.g. /kaggle/working/model)")
    p.add_argument(
        "--merge", action="store_true", help="also write the adapter merged into the dequantised base model (16-bit)"
    )
    p.set_defaults(func=cmd_export_model)


def _flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, section, key in (
        ("remote", "storage", "remote"),
        ("storage", "storage", "url"),
        ("study_name", "study", "name"),
        ("warm_start_from", "study", "warm_start"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            if not value.strip():
                raise UserError(f"--{flag.replace('_', '-')} is empty; give a value or leave the flag out")
            overrides.setdefault(section, {})[key] = value
    if getattr(args, "n_trials", None) is not None:
        overrides.setdefault("study", {})["n_trials"] = args.n_trials
    return overrides


def resolve_config(args: argparse.Namespace) -> Config:
    return load_config(args.preset, args.config, args.sets, _flag_overrides(args))


def resolve_location(args: argparse.Namespace) -> StudyLocation:
    """For reading commands: where the study lives, from flags, --set, --config, --preset
    (a study in a remote is pulled into this machine's cache, read-only)."""
    location = explicit_location(config_layers(args.preset, args.config, args.sets, _flag_overrides(args)).merged)
    return reading_location(location) if getattr(args, "remote", None) else location


# -- commands ----------------------------------------------------------------------------
def cmd_show_config(args: argparse.Namespace) -> int:
    print(to_toml(redacted_config(resolve_config(args))))  # a password never reaches the terminal
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    print(validate(resolve_config(args)))
    return EXIT_OK


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    print(make_wheelhouse(args.output, source=args.source, extras=tuple(args.extra)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in RUN_OPTIONS}  # the flags' names are the request's
    request = RunRequest.from_layers(args.preset, args.config, args.sets, _flag_overrides(args), **options)
    result = execute(request)
    if result.summary is not None:
        print_summary(result.summary)
    return result.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    opened = open_for_reading(resolve_location(args))
    text, code = status(opened.study, opened.config)
    print(text)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    opened = open_for_reading(resolve_location(args))
    rep = collect_report(opened.study, opened.config, artifact_store(opened.config.storage.artifacts, create=False))
    md_path, html_path = write_report(rep, args.output, opened.study)
    print(render_markdown(rep))
    log.info("wrote %s and %s", md_path, html_path)
    return EXIT_OK


def cmd_ensemble(args: argparse.Namespace) -> int:
    trials = _parse_trials(args.trials) if args.trials else None

    def ensemble(location: StudyLocation) -> str:
        opened = open_for_reading(location, mode="write")  # the ensemble is stored on the study
        return run_ensemble(opened.study, opened.config, trials=trials, top=args.top)

    if getattr(args, "remote", None):  # stored on the remote's study, under its lease
        merged = config_layers(args.preset, args.config, args.sets, _flag_overrides(args)).merged
        grace = (merged.get("storage") or {}).get("grace_period") or StorageSection().grace_period
        print(write_through(explicit_location(merged), float(grace), ensemble))
    else:
        print(ensemble(resolve_location(args)))
    return EXIT_OK


def _parse_trials(text: str) -> list[int]:
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--trials {text!r} must be trial numbers separated by commas, e.g. 0,1,2") from None
    if len(set(numbers)) != len(numbers):
        raise UserError(f"--trials {text!r} names a trial twice; an ensemble needs distinct trials")
    if len(numbers) < 2:
        raise UserError(f"--trials {text!r}: an ensemble needs at least two trials")
    return numbers


def cmd_predict(args: argparse.Namespace) -> int:
    summary = predict_file(
        args.input,
        args.output,
        location=None if args.model else resolve_location(args),
        trial=args.trial,
        ensemble=args.ensemble,
        model_dir=args.model,
        on_bad_row=args.on_bad_row,
        batch_size=args.batch_size,
    )
    print(summary)
    return EXIT_OK


def cmd_export_model(args: argparse.Namespace) -> int:
    print(export_model(resolve_location(args), args.trial, args.output, merge=args.merge))
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    check_port(args.port)
    check_host(args.host)
    opened = open_for_reading(resolve_location(args), mode="write")  # the dashboard saves notes
    serve_dashboard(opened.study, opened.config, host=args.host, port=args.port)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    manifest = export_study_bundle(resolve_location(args), args.output)
    print(
        f"wrote bundle {args.output}: {manifest['files']} files in {len(manifest['units'])} units, "
        f"{manifest['total_bytes'] / 2**20:.1f} MiB; next session: optuna-search run --resume-from {args.output} "
        "(same config)"
    )
    return EXIT_OK


def _damaged_database(e: BaseException) -> str | None:
    text = str(e)
    if "database disk image is malformed" in text or "file is not a database" in text:
        return (
            "the study database is damaged (database disk image is malformed); restore the study.db of the last "
            "bundle (`optuna-search run --resume-from BUNDLE` in a new directory), or salvage it with "
            "`sqlite3 study.db .recover | sqlite3 recovered.db` and point --storage at recovered.db"
        )
    return None


class _LevelFormatter(logging.Formatter):
    """Progress lines as they are; warnings, errors and debug lines say their level."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno == logging.INFO:
            return line
        stamp, _, rest = line.partition(" ")
        return f"{stamp} {record.levelname} {rest}"


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Progress and results of this tool at INFO (DEBUG with -v, WARNING with -q) on
    stderr; the libraries' warnings too, with their level."""
    root = logging.getLogger()
    if not root.handlers:  # a host application (a notebook, pytest) keeps its own
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LevelFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    prefer_expandable_segments(os.environ)  # before anything starts CUDA
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    if args.command != "show-config":
        # Our own log lines say what happened to each trial; Optuna's would add tracebacks.
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        # Once for every command: the libraries' known noise, among it the "experimental"
        # Optuna features relied on here.
        quiet_libraries()
    setup_logging(args.quiet, args.verbose)
    if args.command == "run":
        handle_sigterm()
    try:
        return _run_command(args)
    finally:
        close_storages()


def _run_command(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DiskFull as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DISK_FULL
    except KeyboardInterrupt as e:
        print(
            "interrupted: completed trials are saved and the interrupted one resumes from its last checkpoint; "
            "run the same command again",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except Exception as e:
        if disk_full(e):
            print(
                "error: no space left on device while writing the study database; free some space and run the same "
                "command (completed trials are saved, the interrupted one resumes)",
                file=sys.stderr,
            )
            return EXIT_DISK_FULL
        message = _damaged_database(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
