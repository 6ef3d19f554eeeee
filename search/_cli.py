"""`optuna-search` command line. Heavy libraries (torch, transformers, peft, optuna)
are imported inside the commands, never at module import, so ``--help`` is instant.

Exit codes: 0 study complete / command succeeded, 1 study incomplete (a grid point
failed), 2 bad input (message names the problem and the fix; nothing written),
3 time budget reached (resume in a new session with the same command).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

from optuna_search.search._config import Config, load_config, to_toml
from optuna_search.search._errors import UserError

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3

log = logging.getLogger("optuna_search")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (precedence: flags > --set > --config > --preset > defaults)")
    g.add_argument("--preset", help="start from a shipped preset: kaggle-t4 (the flagship study) or demo (CPU)")
    g.add_argument("--config", metavar="FILE", help="TOML config file")
    g.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="sets",
        help="override one key, e.g. --set train.epochs=1 --set 'study.grid={lora_r=[8]}' (repeatable)",
    )
    g.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna-search.db)")
    g.add_argument("--study-name", help="study name (default from the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-search",
        description="Resumable Optuna grid studies for LoRA/QLoRA fine-tuning of causal LMs.",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run every grid point that has no COMPLETE trial yet")
    _add_config_args(p)
    p.add_argument("--retry-failed", action="store_true", help="also re-run grid points whose last trial failed")
    p.add_argument(
        "--time-budget", metavar="DURATION", type=parse_duration,
        help="session time budget, e.g. 11h30m: start no trial that cannot finish, checkpoint and stop before it ends (exit 3)",
    )
    p.add_argument(
        "--workers", type=int, metavar="N",
        help="parallel worker processes on this study, each pinned to its own GPU (default: one per visible GPU, 1 on CPU)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--resume-from", metavar="BUNDLE",
        help="import a study bundle written by `export` (e.g. a read-only Kaggle input) into the working directory, then run",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="per grid point: state, attempts, value, resumed step; hours so far and ETA")
    _add_config_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="Markdown + HTML report: tables, baselines, significance, recommendation")
    _add_config_args(p)
    p.add_argument("--output", "-o", default="optuna-search-report", metavar="DIR",
                   help="directory for report.md and report.html (default: optuna-search-report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard (127.0.0.1 unless --host)")
    _add_config_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("export", help="write a study bundle (database, checkpoints, artifacts, checksum manifest)")
    _add_config_args(p)
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="bundle directory to create (e.g. /kaggle/working/bundle)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("show-config", help="print the resolved configuration as TOML")
    _add_config_args(p)
    p.set_defaults(func=cmd_show_config)

    p = sub.add_parser("validate", help="check data, labels and model before spending GPU time")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "storage", None):
        overrides.setdefault("storage", {})["url"] = args.storage
    if getattr(args, "study_name", None):
        overrides.setdefault("study", {})["name"] = args.study_name
    return load_config(args.preset, args.config, args.sets, overrides)


def cmd_show_config(args: argparse.Namespace) -> int:
    print(to_toml(resolve_config(args)))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from optuna_search.search._study import preflight

    from optuna_search.objectives._quality import quality_warnings, render_distribution

    config = resolve_config(args)
    _quiet_libraries()
    pf = preflight(config)
    d = pf.data
    print(f"data ok: train {len(d.train.examples)}, validation {len(d.validation.examples)}, test {len(d.test.examples)} examples")
    print("label vocabularies (every validation/test label occurs in train):")
    for f in d.fields:
        print(f"  {f}: {len(d.vocab[f])} labels: {', '.join(d.vocab[f])}")
    print("class distribution:")
    print(render_distribution(pf.quality))
    warnings_ = quality_warnings(pf.quality)
    for w in warnings_:
        print(f"warning: {w}", file=sys.stderr)
    print(f"evaluation subset: {len(pf.eval_examples)} test examples (seed {config.eval.seed})")
    print("baselines on that subset:")
    for name, b in pf.baselines.items():
        print(f"  {name}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in b.items()))
    return EXIT_OK


def parse_duration(text: str) -> float:
    """'11h30m', '90m', '45s', '2h', '1.5h' or plain seconds -> seconds."""
    import re

    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 11h30m, 90m or 600s")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    total = h * 3600 + mi * 60 + se
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive duration")
    return total


def cmd_run(args: argparse.Namespace) -> int:
    from optuna_search.dashboards._summary import best_row, render_summary, summary_rows
    from optuna_search.search._study import ATTR_BASELINES, run_study

    config = resolve_config(args)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers} must be at least 1")
    if args.resume_from:
        from optuna_search.storage._bundle import import_bundle

        import_bundle(args.resume_from, config)
    _quiet_libraries()
    demo = config.model.name_or_path.startswith("builtin:")
    if demo:
        log.info("DEMO: a tiny randomly-initialised model on synthetic data; its numbers say nothing about real models")
    if args.worker:
        # One of `run --workers N`'s processes: run points until none is left for us;
        # the parent prints the summary.
        outcome = run_study(config, retry_failed=args.retry_failed, time_budget_s=args.time_budget, wait_for_others=False)
        return EXIT_BUDGET if outcome.budget_reached else EXIT_OK
    from optuna_search.search._workers import default_workers, run_workers

    workers = args.workers if args.workers is not None else default_workers(config.train.gpus_per_trial)
    if workers > 1:
        from optuna_search.search._study import RunOutcome, grid_state, open_study, preflight

        open_study(config, preflight(config), create=True)  # created once, before the workers race
        log.info("starting %d workers", workers)
        codes = run_workers(args.argv, workers, config.train.gpus_per_trial)
        if any(c == EXIT_USAGE for c in codes):
            return EXIT_USAGE
        study = open_study(config, None, create=False)
        outcome = RunOutcome(study, grid_state(study, config), ran=-1, budget_reached=EXIT_BUDGET in codes)
    else:
        outcome = run_study(config, retry_failed=args.retry_failed, time_budget_s=args.time_budget)
    study, state, ran = outcome.study, outcome.state, outcome.ran
    fields = list(config.data.fields)
    rows = summary_rows(study, state, fields)
    baselines = study.user_attrs.get(ATTR_BASELINES)
    print(f"study {config.study.name!r}: {sum(r['status'] == 'complete' for r in state)}/{len(state)} grid points complete"
          + ("" if ran else " (nothing to run: every grid point already has a COMPLETE trial)" if all(r["status"] == "complete" for r in state) else ""))
    print(render_summary(rows, fields, baselines))
    best = best_row(rows)
    if best is not None:
        print(f"best: {best['point']} (trial {best['trial']}), overall accuracy {100 * best['overall']:.1f}%")
        if baselines and "majority" in baselines:
            maj = baselines["majority"]["overall"]
            verdict = "beats" if best["overall"] > maj else "does NOT beat"
            print(f"best {verdict} the majority-class baseline ({100 * maj:.1f}% overall)")
        print("significance tests and the recommendation: optuna-search report")
    if demo:
        print("note: this is the DEMO study (tiny model, synthetic data): it shows the machinery, not model quality")
    missing = [r for r in state if r["status"] != "complete"]
    if outcome.budget_reached and missing:
        print(f"time budget reached with {len(missing)} grid point(s) left; run the same command in a new "
              "session to resume (export the study first if this machine goes away)", file=sys.stderr)
        return EXIT_BUDGET
    if missing:
        for r in missing:
            why = r["trials"][-1].user_attrs.get("error", "") if r["trials"] else ""
            print(f"incomplete: {r['key']} is {r['status']}" + (f" ({why})" if why else ""), file=sys.stderr)
        if any(r["status"] == "failed" for r in missing):
            print("re-run failed points with: optuna-search run --retry-failed", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from optuna_search.dashboards._summary import status_rows, render_status
    from optuna_search.search._study import grid_state, open_study, study_config

    config = resolve_config(args)
    study = open_study(config, None, create=False)
    config = study_config(study, config)
    state = grid_state(study, config)
    print(render_status(status_rows(state), config.study.name))
    return EXIT_OK if all(r["status"] == "complete" for r in state) else EXIT_INCOMPLETE


def cmd_report(args: argparse.Namespace) -> int:
    from optuna_search.dashboards._report import collect_report, render_markdown, write_report
    from optuna_search.search._study import open_study
    from optuna_search.storage._storages import artifact_store

    config = resolve_config(args)
    _quiet_libraries()
    study = open_study(config, None, create=False)
    rep = collect_report(study, artifact_store(config.storage.artifacts))
    md_path, html_path = write_report(rep, args.output)
    print(render_markdown(rep))
    log.info("wrote %s and %s", md_path, html_path)
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_search.dashboards._launch import serve_dashboard

    config = resolve_config(args)
    serve_dashboard(config, host=args.host, port=args.port)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from optuna_search.storage._bundle import export_bundle

    config = resolve_config(args)
    manifest = export_bundle(config, args.output)
    print(f"wrote bundle {args.output}: {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB; "
          f"next session: optuna-search run --resume-from {args.output} (same config)")
    return EXIT_OK


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("bitsandbytes", "transformers", "peft", "accelerate", "datasets", "optuna", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    except Exception:  # noqa: BLE001 - only cosmetics
        pass
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    if args.command not in ("show-config",):
        # Our own log lines say what happened to each trial; Optuna's would add tracebacks.
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        import warnings

        # Heartbeat, fail_stale_trials and metric names are "experimental" in Optuna; we
        # rely on them deliberately and test them.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: completed trials are saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
