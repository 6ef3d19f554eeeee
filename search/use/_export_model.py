"""`optuna-search export-model`: the measured trial as a standalone folder.

    DIR/adapter_config.json, adapter_model.safetensors   the adapter, in peft's format
                                                        (AutoPeftModelForCausalLM loads it)
    DIR/tokenizer.json, tokenizer_config.json, ...      the tokenizer with its chat template
    DIR/optuna-search-model.json                        what `predict --model DIR` needs
    DIR/README.md                                       the model card, written from the study
    DIR/merged/                                         with --merge: base + adapter merged

The model card says what was measured: the trial's params, test and validation accuracy
per field with Wilson intervals, macro-F1, the baselines and McNemar p-values against
them, calibration, the study's results table, the data and evaluation-subset digests,
the base model's licence where known, and how to call `predict`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from optuna_search.core import (
    Config,
    StudyLocation,
    StudyMeta,
    TrialRecord,
    UserError,
    file_sha256,
    markdown_table,
    one_answer,
    pct,
    writable,
)
from optuna_search.dashboards import SUMMARY_METRICS, compare_with_baselines, field_head, field_rows, verdict
from optuna_search.objectives import (
    base_licence,
    count_parameters,
    demo_note,
    load_tokenizer,
    merged_model,
    native_bf16,
    pick_compute_dtype,
    resolve_model_source,
)
from optuna_search.search.loop import rows_of, study_state
from optuna_search.search.setup import open_for_reading
from optuna_search.search.use._predict import SPEC_FILE, ModelSpec, chosen_trial, spec_from_study
from optuna_search.storage import artifact_store, read_meta

if TYPE_CHECKING:
    import optuna

CARD_METRICS = SUMMARY_METRICS[1:]
"""The model card's columns besides accuracy (the summary's: macro-F1, ...)."""
log = logging.getLogger("optuna_search")


def export_model(location: StudyLocation, trial: str, output: str, *, merge: bool = False) -> str:
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output '{out}' exists and is not an empty folder; choose a new folder")
    if not out.parent.exists():
        raise UserError(f"--output '{out}': folder '{out.parent}' does not exist; create it first")
    opened = open_for_reading(location)
    study, config = opened.study, opened.config
    record = chosen_trial(study, config, trial)
    spec = spec_from_study(study, config, trial=record.number or 0, checkpoints_dir=location.checkpoints_dir)
    source = resolve_model_source(config.model.name_or_path, config.model.gguf_file, config.model.revision)
    base_sha = _base_digest(config, source)
    with writable(out):
        merged = _write_export(out, study, config, record, spec, source, base_sha, merge)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return (
        f"exported trial {record.number} ({record.label}) to {out} ({size / 2**20:.1f} MiB"
        + (
            f"; merged model {merged[0] / 2**20:.0f} MiB in {out / 'merged'}, peak process memory {merged[1]:.0f} MiB"
            if merged
            else ""
        )
        + "); use it with: "
        f"optuna-search predict --model {out} --input reports.jsonl --output predictions.jsonl"
    )


def _write_export(
    out: Path,
    study: optuna.Study,
    config: Config,
    record: TrialRecord,
    spec: ModelSpec,
    source: str,
    base_sha: str | None,
    merge: bool,
) -> tuple[int, float] | None:
    """The export's files (adapter, tokenizer, spec, model card, merged model): all of them,
    or none (a failure removes the folder)."""
    member = spec.members[0]
    out.mkdir(parents=True, exist_ok=True)
    try:
        for f in Path(member.adapter).iterdir():  # adapter + the tokenizer saved beside it when the trial finished
            if f.is_file():
                shutil.copy2(f, out / f.name)
        if not (out / "tokenizer_config.json").exists():
            _save_tokenizer(source, config, out)
        exported = dataclasses.replace(
            spec, members=[dataclasses.replace(member, adapter=".")], tokenizer_dir=".", base_sha256=base_sha
        )
        (out / SPEC_FILE).write_text(json.dumps(exported.to_json(), indent=1))
        (out / "README.md").write_text(model_card(study, config, record, exported, source, out))
        return _merge(source, config, record, out) if merge else None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave half an export behind
        raise


def _save_tokenizer(source: str, config: Config, out: Path) -> None:
    load_tokenizer(source, config.model).save_pretrained(str(out))


def _base_digest(config: Config, source: str) -> str | None:
    """SHA-256 of a local base: the GGUF file, or the weight files of a folder (hub ids
    are pinned by model.revision instead)."""
    name = config.model.name_or_path
    if name.endswith(".gguf") and Path(name).is_file():
        return file_sha256(Path(name))
    folder = Path(source)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f.name.encode() + file_sha256(f).encode())
    return h.hexdigest()


MERGE_WARN_BYTES = 4 * 2**30


def _merge_dtype(record: TrialRecord):
    """16 bits: the trial's compute dtype when it trained in 16 bits, else bf16 where the
    GPU has it natively, fp16 otherwise (a T4, the CPU)."""
    import torch

    if record.compute_dtype in ("float16", "bfloat16"):
        return getattr(torch, record.compute_dtype)
    return torch.bfloat16 if native_bf16() else torch.float16


def _check_merge_room(source: str, config: Config, out: Path, dtype) -> int:
    """The merged model's size (parameters x 2 bytes), said before anything is written;
    refused, with the numbers, when the output's disk has not that much free."""
    import shutil as sh

    size = count_parameters(source, config.model) * dtype.itemsize
    free = sh.disk_usage(out.parent).free
    if size > free:
        raise UserError(
            f"--merge writes about {size / 2**30:.1f} GiB into {out / 'merged'}, but only {free / 2**30:.1f} GiB "
            "are free there; export without --merge (the adapter alone, a few MiB, loads onto the base with "
            "peft), or give --output on a larger disk"
        )
    level = logging.WARNING if size >= MERGE_WARN_BYTES else logging.INFO
    log.log(
        level,
        "--merge: writing about %.1f GiB (%s) into %s; %.1f GiB free there",
        size / 2**30,
        str(dtype).replace("torch.", ""),
        out / "merged",
        free / 2**30,
    )
    return size


def _merge(source: str, config: Config, record: TrialRecord, out: Path) -> tuple[int, float]:
    """The adapter merged into the dequantised base it was trained against, in 16 bits:
    loadable with plain AutoModelForCausalLM. Returns the bytes written and the process's
    peak memory (MiB)."""
    import resource

    dtype = _merge_dtype(record)
    _check_merge_room(source, config, out, dtype)
    trained = pick_compute_dtype(record.compute_dtype or config.model.compute_dtype)
    merged = merged_model(source, config.model, str(out), trained, dtype)
    merged.save_pretrained(str(out / "merged"))
    del merged
    _save_tokenizer(source, config, out / "merged")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return sum(f.stat().st_size for f in (out / "merged").rglob("*") if f.is_file()), peak


def model_card(study: optuna.Study, config: Config, r: TrialRecord, spec: ModelSpec, source: str, out: Path) -> str:
    """The exported model's README: what it is, how it measured, against what, where it came from, how to use it."""
    meta = read_meta(study)
    lines = [
        f"# {study.study_name}: trial {r.number} ({r.label})",
        "",
        f"A LoRA adapter for `{config.model.name_or_path}`, chosen by the optuna-search study `{study.study_name}` "
        f"on its **{config.eval.objective_split}** split and measured on {len(meta.eval_subset or [])} fixed test "
        f"examples ({'label scoring' if config.eval.method == 'score' else 'greedy decoding'}).",
        "",
    ]
    if (note := demo_note(config)) is not None:
        lines += [f"> {note}.", ""]
    lines += [
        "## Hyperparameters",
        "",
        markdown_table(["setting", "value"], [[k, v] for k, v in (r.effective_params or {}).items()]),
        "",
    ]
    lines += _card_measured(r, list(config.data.fields))
    lines += _card_baselines(study, config, r, meta)
    lines += _card_study(study, config)
    lines += _card_provenance(config, r, spec, source, meta)
    lines += _card_use(out, spec.input_column)
    return "\n".join(lines)


def _card_measured(r: TrialRecord, fields: list[str]) -> list[str]:
    if r.test is None:
        return []
    lines = [
        "## Measured",
        "",
        markdown_table(field_head(CARD_METRICS), field_rows(r, fields, metrics=CARD_METRICS)),
        "",
    ]
    for f, label in r.test.single_label().items():
        lines += [f"**Warning: {one_answer(f, label)}.**", ""]
    if r.test.calibration:
        calibration = "; ".join(
            f"{f} log-loss {c['log_loss']:.3f}, Brier {c['brier']:.3f}, ECE {c['ece']:.3f}"
            for f, c in r.test.calibration.items()
        )
        lines += [f"Calibration (test): {calibration}", ""]
    return lines


def _card_baselines(study: optuna.Study, config: Config, r: TrialRecord, meta: StudyMeta) -> list[str]:
    comparisons = compare_with_baselines(study, config, artifact_store(config.storage.artifacts, create=False), r)
    if not comparisons:
        return []
    body = [
        [
            name,
            pct((meta.baselines or {}).get(name, {}).get("overall")),
            f"{c.tests['overall'].only_a} vs {c.tests['overall'].only_b}",
            f"{c.tests['overall'].p:.3g}",
        ]
        for name, c in comparisons.items()
    ]
    header = ["baseline", "overall", "examples only this model / only the baseline gets all fields right", "McNemar p"]
    return ["## Against the baselines (same test examples)", "", markdown_table(header, body), ""]


def _card_study(study: optuna.Study, config: Config) -> list[str]:
    table = rows_of(study_state(study, config), config)
    return [
        "## The study",
        "",
        "\n".join(verdict(table, config, study, commands=False)),
        "",
        markdown_table(
            ["configuration", "overall (test)", "validation", "status"],
            [[x.point, pct(x.overall), pct(x.validation), x.status.value] for x in table],
        ),
        "",
    ]


def _card_provenance(config: Config, r: TrialRecord, spec: ModelSpec, source: str, meta: StudyMeta) -> list[str]:
    base = f"- base model: `{config.model.name_or_path}`"
    if config.model.revision:
        base += f" (revision `{config.model.revision}`)"
    if spec.base_sha256:
        base += f", SHA-256 `{spec.base_sha256}`"
    digest = json.dumps(meta.data_digest) if meta.data_digest else "not recorded (study created by an earlier version)"
    labels = "; ".join(f"{f}: {', '.join(spec.labels[f])}" for f in config.data.fields)
    return [
        "## Provenance",
        "",
        base,
        f"- base model licence: {base_licence(config.model.name_or_path, source)}",
        f"- adapter SHA-256: `{spec.members[0].sha256}`",
        f"- test subset SHA-256: `{r.eval_ids_sha256}`; validation subset: `{r.validation_ids_sha256}`",
        f"- data files SHA-256: {digest}",
        f"- prompt: {config.model.chat_template} chat template, max length {config.model.max_length} tokens "
        f"(the report is truncated, never the answer); label sets: {labels}",
        "",
    ]


def _card_use(out: Path, input_column: str) -> list[str]:
    # The folder's name, never this machine's path to it: the card travels with the folder.
    return [
        "## Use",
        "",
        "```bash",
        f"optuna-search predict --model {out.name} --input reports.jsonl --output predictions.jsonl",
        "```",
        "",
        "```python",
        "from optuna_search import Predictor",
        f"predictor = Predictor.from_dir({out.name!r})",
        f'print(predictor.predict([{{"{input_column}": "..."}}]))',
        "```",
        "",
        f"Or with peft alone (base reachable): `AutoPeftModelForCausalLM.from_pretrained({out.name!r})`; the "
        "prompt must then be built as optuna-search builds it (the tokenizer's chat template, the instruction, "
        "the report).",
        "",
    ]
