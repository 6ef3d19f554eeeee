"""From the measured trial to labels for new reports: :class:`Predictor` and `predict`.

A predictor is exactly what a trial was evaluated with: the study's prompt template,
instruction, label sets, ``model.max_length`` and truncation, evaluation method (label
scoring or greedy generation), and the base model loaded and quantized the same way,
with the trial's trained adapter on it (an ensemble: every member's adapter on one copy
of the base, soft voting). Its source is a study (``from_study``: the chosen trial, a
trial by number, or the stored ensemble) or a folder written by ``export-model``
(``from_dir``: no study needed). ``predict_file`` streams a JSONL/CSV input in batches
with progress on stderr, appends to its output after every batch (a rerun skips as many
usable rows as the output holds, checking each row's text against the digest written
beside the output, ``<output>.rows``, so a kill loses at most one batch and an output
begun on another input is refused, whatever its ids; ids may repeat), and reports bad
rows by line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_search.core import (
    Config,
    StudyLocation,
    TrialRecord,
    UserError,
    best_record,
    format_seconds,
    replaced_atomically,
    writable,
)
from optuna_search.objectives import (
    CHARS_PER_TOKEN_BOUND,
    Example,
    PromptEncoder,
    evaluate_examples,
    load_adapters,
    load_tokenizer,
    resolve_model_source,
)
from optuna_search.search.setup import open_for_reading
from optuna_search.storage import adapter_candidates, adapter_digest, adapter_here, read_meta

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")
SPEC_FILE = "optuna-search-model.json"
SPEC_FORMAT = 1
BAD_ROW_POLICIES = ("skip", "fail")


@dataclass(frozen=True)
class Member:
    name: str
    trial: int
    adapter: str
    params: dict[str, Any]
    sha256: str | None


@dataclass(frozen=True)
class ModelSpec:
    """What prediction needs, and where the model came from (``optuna-search-model.json``)."""

    fields: list[str]
    labels: dict[str, list[str]]
    """Each field's labels, in the order they were scored."""
    default_instruction: str
    instruction_column: str
    input_column: str
    chat_template: str
    max_length: int
    method: str
    batch_size: int
    base: dict[str, Any]
    """The config's [model] section: name_or_path, gguf_file, revision, quantization, ..."""
    members: list[Member]
    """One adapter, or an ensemble's (soft voting)."""
    tokenizer_dir: str | None = None
    """A folder with the tokenizer and its chat template (exports); None: the base's."""
    base_sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    id_column: str = "id"
    """The column that names a row (exports made before it: ``id``)."""

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSpec:
        d = {k: v for k, v in d.items() if k != "format"}
        d["members"] = [Member(**m) for m in d["members"]]
        return cls(**d)


@dataclass
class RowPrediction:
    id: str
    labels: dict[str, str | None]
    """Per field, a label of the field's label set, or None: the model's answer for that
    field was no label of its set (or there was no answer; see ``invalid``)."""
    probs: dict[str, dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """The input row's other columns, passed through."""
    invalid: dict[str, str | None] = field(default_factory=dict)
    """Fields whose generated answer was not one of the field's labels: the raw answer
    (None: the field's line was missing). Label scoring never has any."""

    def to_record(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            **{k: v for k, v in self.extra.items() if k not in ("id", "labels", "probs", "invalid")},
            "labels": self.labels,
        }
        if self.probs is not None:
            out["probs"] = self.probs
        if self.invalid:
            out["invalid"] = self.invalid
        return out


# -- where a model comes from ---------------------------------------------------------------
def chosen_trial(study: optuna.Study, config: Config, which: str | int) -> TrialRecord:
    """``best`` (the study's best trial, ``core.best_record``) or a trial number; only a
    COMPLETE trial with a trained adapter predicts."""
    fields = list(config.data.fields)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if str(which) == "best":
        if len(config.study.objectives) > 1:
            front = ", ".join(str(t.number) for t in study.best_trials)
            raise UserError(
                f"--trial best is ambiguous on a multi-objective study; pass one trial of the Pareto front: {front}"
            )
        best = best_record(
            [TrialRecord.from_trial(t, fields) for t in trials.values()],
            config.study.objectives[0],
            config.eval.objective_split,
            fields,
        )
        if best is None:
            raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet; run it first")
        number = best.number
    else:
        try:
            number = int(which)
        except ValueError:
            raise UserError(f"--trial {which!r} must be 'best' or a trial number") from None
    t = trials.get(number) if number is not None else None
    if t is None:
        raise UserError(f"study {study.study_name!r} has no trial {number}; trials: 0-{max(trials, default=-1)}")
    if t.state.name != "COMPLETE":
        raise UserError(
            f"trial {number} is {t.state.name}, not COMPLETE: it has no evaluated model; pick a COMPLETE trial "
            "(optuna-search status lists them)"
        )
    record = TrialRecord.from_trial(t, fields)
    if record.duplicate_of is not None:
        return chosen_trial(study, config, record.duplicate_of)
    return record


def _adapter_dir(config: Config, record: TrialRecord, location_dir: str | None) -> str:
    """Where the trial's adapter is on this machine (``adapter_candidates``)."""
    point = {k: record.params[k] for k in config.searched_keys() if k in record.params}
    candidates = adapter_candidates(
        record.adapter_dir, config.train.output_dir, config.study.name, point, config.storage.url, location_dir
    )
    found = adapter_here(candidates)
    if found is not None:
        return str(found)
    raise UserError(
        f"the adapter of trial {record.number} is not at {', '.join(str(c) for c in candidates)}; pass the "
        "folder of the study's checkpoints (--set train.output_dir=DIR; in Python, checkpoints_dir=DIR), or "
        "export-model it where it ran"
    )


def study_labels(study: optuna.Study, config: Config, record: TrialRecord) -> dict[str, list[str]]:
    """The label sets a study scored, in order: stored on the study (since this
    version), else read off the trial's confusion matrices."""
    meta = read_meta(study)
    if meta.labels:
        return meta.labels
    if record.test is not None and all(f in record.test.confusion for f in config.data.fields):
        return {
            f: [lab for lab in record.test.confusion[f]["labels"] if lab != "<invalid>"] for f in config.data.fields
        }
    raise UserError(f"study {study.study_name!r} stores no label sets; it cannot predict")


def spec_from_study(
    study: optuna.Study,
    config: Config,
    *,
    trial: str | int = "best",
    ensemble: bool = False,
    checkpoints_dir: str | None = None,
) -> ModelSpec:
    if ensemble:
        stored = [e for e in read_meta(study).ensembles or [] if e["method"] == "soft"]
        if not stored and config.eval.method != "score":
            raise UserError(
                f"study {study.study_name!r} evaluates by generation (eval.method = {config.eval.method!r}), which "
                "gives no label probabilities, so it can have no soft-voting ensemble to predict with; predict with "
                'one trial (--trial best or N), or run a study with eval.method = "score" for ensembles'
            )
        if not stored:
            raise UserError(
                f"study {study.study_name!r} has no stored soft-voting ensemble; create one with "
                "`optuna-search ensemble --top K` (members evaluated by label scoring)"
            )
        records = [chosen_trial(study, config, n) for n in stored[-1]["trials"]]
    else:
        records = [chosen_trial(study, config, trial)]
    members = []
    for r in records:
        adapter = _adapter_dir(config, r, checkpoints_dir)
        digest = adapter_digest(Path(adapter))
        if r.adapter_sha256 and digest != r.adapter_sha256:
            raise UserError(
                f"the adapter at '{adapter}' is not the one trial {r.number} trained (SHA-256 differs); "
                "restore the study's checkpoints"
            )
        members.append(Member(f"trial-{r.number}", r.number or 0, adapter, dict(r.params), digest))
    meta = read_meta(study)
    # As the trial evaluated: its compute dtype (the "auto" of the machine it trained on)
    # and evaluation batch.
    base = {**dataclasses.asdict(config.model), "compute_dtype": records[0].compute_dtype or config.model.compute_dtype}
    return ModelSpec(
        fields=list(config.data.fields),
        labels=study_labels(study, config, records[0]),
        default_instruction=config.data.default_instruction,
        instruction_column=config.data.instruction_column,
        input_column=config.data.input_column,
        id_column=config.data.id_column,
        chat_template=config.model.chat_template,
        max_length=config.model.max_length,
        method=config.eval.method,
        batch_size=records[0].eval_batch_size or config.eval.batch_size,
        base=base,
        members=members,
        provenance={
            "study": study.study_name,
            "trials": [r.number for r in records],
            "params": [dict(r.params) for r in records],
            "voting": "soft" if ensemble else None,
            "eval_subset_sha256": records[0].eval_ids_sha256,
            "data_sha256": meta.data_digest,
        },
    )


def spec_from_dir(path: str | Path) -> ModelSpec:
    root = Path(path)
    f = root / SPEC_FILE
    if not f.is_file():
        raise UserError(
            f"'{root}' is not a model exported by optuna-search (no {SPEC_FILE}); pass a folder written by "
            "`optuna-search export-model`"
        )
    try:
        d = json.loads(f.read_text())
        if d.get("format") != SPEC_FORMAT:
            raise ValueError(f"format {d.get('format')!r}")
        spec = ModelSpec.from_json(d)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"'{f}' is damaged or from another version ({e}); export the model again") from None
    # Paths in an export are relative to its folder, so the folder can move.
    members = [dataclasses.replace(m, adapter=str(root / m.adapter)) for m in spec.members]
    return dataclasses.replace(spec, members=members, tokenizer_dir=str(root / (spec.tokenizer_dir or "tokenizer")))


# -- the predictor ------------------------------------------------------------------------
class Predictor:
    """Labels bug reports with a measured model (see the module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        model_cfg = _ModelSection(**spec.base)
        try:
            source = resolve_model_source(model_cfg.name_or_path, model_cfg.gguf_file, model_cfg.revision)
        except UserError as e:
            raise UserError(f"the base model cannot be found: {e}") from None
        self.tokenizer = load_tokenizer(spec.tokenizer_dir or source, _with_template(model_cfg, spec))
        self.encoder = PromptEncoder(self.tokenizer, spec.fields, spec.labels, spec.max_length)
        try:
            self.model, self.dtype = load_adapters(source, model_cfg, {m.name: m.adapter for m in spec.members})
        except OSError as e:
            raise UserError(
                f"cannot load the base model {model_cfg.name_or_path!r} ({str(e).splitlines()[0]}); check "
                "that it is reachable (a local folder, or the hub with a login for gated models)"
            ) from None

    @classmethod
    def from_study(
        cls,
        storage: str,
        study_name: str | None = None,
        *,
        trial: str | int = "best",
        ensemble: bool = False,
        checkpoints_dir: str | None = None,
    ) -> Predictor:
        opened = open_for_reading(StudyLocation(storage, study_name or None, checkpoints_dir or None))
        return cls(
            spec_from_study(
                opened.study, opened.config, trial=trial, ensemble=ensemble, checkpoints_dir=checkpoints_dir
            )
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Predictor:
        return cls(spec_from_dir(path))

    def examples(self, rows: Iterable[dict[str, Any] | str], start: int = 1) -> list[Example]:
        """Rows as the study's examples (text cut as at load time; ids: the row's id column
        (``data.id_column``), else its number)."""
        s = self.spec
        out = []
        for i, given in enumerate(rows, start=start):
            row = {s.input_column: given} if isinstance(given, str) else given
            if not isinstance(row, dict):
                raise UserError(
                    f"row {i}: {type(row).__name__} is not a row; give a dict with the text in "
                    f"{s.input_column!r}, or the text itself"
                )
            text = row.get(s.input_column)
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"row {i}: no text in column {s.input_column!r}")
            instruction = row.get(s.instruction_column)
            instruction = instruction if isinstance(instruction, str) and instruction.strip() else s.default_instruction
            named = row.get(s.id_column)
            ex_id = str(named) if named not in (None, "") else str(i)
            out.append(
                Example(
                    ex_id, instruction, text[: s.max_length * CHARS_PER_TOKEN_BOUND], dict.fromkeys(s.fields, ""), i
                )
            )
        return out

    def predict(self, rows: Iterable[dict[str, Any] | str] | str | dict[str, Any]) -> list[RowPrediction]:
        """Labels (and, with label scoring, each label's probability) for each row: a
        dict with the study's text column (other columns are passed through) or the text;
        one row (a string or a dict) gives a list of one."""
        rows = [rows] if isinstance(rows, (str, dict)) else list(rows)
        examples = self.examples(rows)
        extras = [r if isinstance(r, dict) else {} for r in rows]
        return self._predict(
            examples,
            [
                {k: v for k, v in e.items() if k not in (self.spec.input_column, self.spec.instruction_column)}
                for e in extras
            ],
        )

    def _predict(self, examples: list[Example], extras: list[dict[str, Any]]) -> list[RowPrediction]:
        s = self.spec
        per_member = []
        for m in s.members:
            self.model.set_adapter(m.name)
            per_member.append(
                evaluate_examples(
                    self.model,
                    self.tokenizer,
                    self.encoder,
                    examples,
                    method=s.method,
                    batch_size=s.batch_size,
                    dtype=self.dtype,
                )
            )
        out = []
        for i, e in enumerate(examples):
            preds = [pm[i] for pm in per_member]
            if len(preds) == 1:
                labels, probs = dict(preds[0].predicted), preds[0].probs
            else:  # soft voting: the mean of the members' label probabilities
                probs = {
                    f: {lab: sum((p.probs or {})[f][lab] for p in preds) / len(preds) for lab in s.labels[f]}
                    for f in s.fields
                }
                labels = {f: max(probs[f].items(), key=lambda kv: kv[1])[0] for f in s.fields}
            # An answer that is no label of its field is not a label (generation can write
            # a severity word under component): null, with the raw answer beside it.
            invalid = {f: v for f, v in labels.items() if v not in s.labels[f]}
            labels = {f: (None if f in invalid else v) for f, v in labels.items()}
            out.append(RowPrediction(e.id, labels, probs, extras[i], invalid))
        return out


@dataclass(frozen=True)
class _ModelSection:
    """A [model] section read back from a spec (the fields loading needs)."""

    name_or_path: str
    gguf_file: str = ""
    revision: str = ""
    chat_template: str = "auto"
    quantization: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"
    max_length: int = 512
    trust_remote_code: bool = False


def _with_template(model_cfg: _ModelSection, spec: ModelSpec) -> _ModelSection:
    # An export's tokenizer carries the template it was evaluated with.
    return dataclasses.replace(model_cfg, chat_template="auto" if spec.tokenizer_dir else spec.chat_template)


# -- files ------------------------------------------------------------------------------------
@dataclass
class _Tally:
    written: int = 0
    skipped: int = 0
    invalid: int = 0
    bad: list[str] = field(default_factory=list)
    usable: int = 0


def predict_file(
    input_path: str,
    output_path: str,
    *,
    location: StudyLocation | None,
    trial: str = "best",
    ensemble: bool = False,
    model_dir: str | None = None,
    on_bad_row: str = "skip",
    batch_size: int | None = None,
) -> str:
    """Predict every row of ``input_path`` into ``output_path`` (see the module docstring)."""
    inp, out = Path(input_path), Path(output_path)
    _check_paths(inp, out)
    spec = _spec(location, trial, ensemble, model_dir, batch_size)
    csv_out = out.suffix.lower() == ".csv"
    done = _written_ids(out, csv_out)
    digests = _written_digests(out, len(done))
    sidecar = out.with_name(out.name + ".provenance.json")
    provenance = {
        "model": spec.provenance,
        "members": [dataclasses.asdict(m) for m in spec.members],
        "base": spec.base,
        "method": spec.method,
        "max_length": spec.max_length,
        "labels": spec.labels,
    }
    _check_same_model(out, sidecar, provenance, resumed=bool(done))
    predictor = Predictor(spec)
    tally = _Tally()
    sink = _Sink(out, sidecar, provenance, spec, csv_out, resumed=bool(done))
    try:
        _predict_rows(predictor, RowReader(inp, spec.input_column), sink, (done, digests), on_bad_row, tally, inp)
    finally:
        sink.close()
    for b in tally.bad[:10]:
        log.warning("skipped %s", b)
    if tally.usable == 0:
        raise UserError(_no_usable_rows(inp, spec, tally))
    return (
        f"wrote {tally.written} predictions to {out}"
        + (f" ({tally.skipped} already there from an earlier run)" if tally.skipped else "")
        + (
            f"; {tally.invalid} answers were no label of their field (written as null, the answer under 'invalid')"
            if tally.invalid
            else ""
        )
        + (f"; skipped {len(tally.bad)} bad rows (first: {tally.bad[0]})" if tally.bad else "")
        + f"; provenance: {sidecar}"
    )


def _spec(
    location: StudyLocation | None, trial: str, ensemble: bool, model_dir: str | None, batch_size: int | None
) -> ModelSpec:
    if model_dir:
        spec = spec_from_dir(model_dir)
    else:
        opened = open_for_reading(location or StudyLocation())
        spec = spec_from_study(
            opened.study,
            opened.config,
            trial=trial,
            ensemble=ensemble,
            checkpoints_dir=location.checkpoints_dir if location else None,
        )
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size} must be a positive integer")
        spec = dataclasses.replace(spec, batch_size=batch_size)
    return spec


SAME_MODEL = ("model", "members", "base", "method", "max_length", "labels")
"""What a resumed output must share with the run that started it."""


def _check_same_model(out: Path, sidecar: Path, provenance: dict[str, Any], *, resumed: bool) -> None:
    """An output that already holds predictions is resumed only by the same model (trial(s),
    adapter digests, base, method, label sets); its provenance is never rewritten."""
    if not resumed:
        return
    try:
        earlier = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"--output '{out}' holds predictions without their provenance ({sidecar.name} is missing or "
            "damaged): where they came from is unknown; choose a new --output"
        ) from None
    differs = [
        k for k in SAME_MODEL if json.dumps(earlier.get(k), sort_keys=True) != json.dumps(provenance[k], sort_keys=True)
    ]
    if differs:
        was, now = earlier.get("model", {}).get("trials"), provenance["model"].get("trials")
        raise UserError(
            f"--output '{out}' holds predictions of another model (trials {was}, this run: {now}; differs in "
            f"{', '.join(differs)}); resume it with the same --trial/--model, or choose a new --output"
        )


def _predict_rows(
    predictor: Predictor,
    reader: RowReader,
    sink: _Sink,
    written: tuple[list[str], list[str] | None],
    on_bad_row: str,
    tally: _Tally,
    inp: Path,
) -> None:
    """Predict the usable rows batch by batch, in input order; a rerun skips the first
    ``len(done)`` usable rows (by position: ids may repeat), checking their texts' digests
    (an output of an earlier version, without them: their ids)."""
    done = written[0]
    spec = predictor.spec
    t0 = last = time.monotonic()
    for chunk in reader.chunks(spec.batch_size):
        examples, extras = [], []
        for line, row, read_problem in chunk:
            ex, problem = _example(predictor, line, row, read_problem, inp)
            if problem is not None:
                if on_bad_row == "fail":
                    raise UserError(f"{problem}; fix the row, or pass --on-bad-row skip")
                tally.bad.append(problem)
                continue
            tally.usable += 1
            if tally.usable <= len(done):
                _check_resumed_row(sink.out, written, tally.usable, ex, f"{inp}:{line}")
                tally.skipped += 1
                continue
            examples.append(ex)
            extras.append({k: v for k, v in row.items() if k not in (spec.input_column, spec.instruction_column)})
        if examples:
            predictions = predictor._predict(examples, extras)
            tally.invalid += sum(len(p.invalid) for p in predictions)
            sink.write(predictions, [_row_digest(ex) for ex in examples])
            tally.written += len(examples)
        if time.monotonic() - last >= 5:
            last = _progress(tally, reader, t0)
    _progress(tally, reader, t0)


def _progress(tally: _Tally, reader: RowReader, t0: float) -> float:
    now = time.monotonic()
    frac = reader.fraction
    eta = (now - t0) * (1 - frac) / frac if frac > 0 else float("nan")
    log.info(
        "predict: %d rows written (%.1f rows/s), %.0f%% of the input, ETA %s",
        tally.written,
        tally.written / max(now - t0, 1e-9),
        100 * frac,
        format_seconds(eta),
    )
    return now


def _row_digest(ex: Example) -> str:
    """What a prediction was made from: the row's instruction and text (as loaded)."""
    return hashlib.sha256(json.dumps([ex.instruction, ex.input]).encode()).hexdigest()[:32]


def _check_resumed_row(out: Path, written: tuple[list[str], list[str] | None], n: int, ex: Example, where: str) -> None:
    done, digests = written
    fix = "give the input it was started with, or choose a new --output"
    if digests is not None and digests[n - 1] != _row_digest(ex):
        raise UserError(
            f"--output '{out}' does not continue this input: its prediction {n} (id {done[n - 1]!r}) was made from "
            f"another text than the input's usable row {n} ({where}, id {ex.id!r}); {fix}"
        )
    if done[n - 1] != ex.id:
        raise UserError(
            f"--output '{out}' does not continue this input: its prediction {n} is for id {done[n - 1]!r}, "
            f"the input's usable row {n} ({where}) has id {ex.id!r}; {fix}"
        )


class _Sink:
    """The output file and its provenance, created with the first predictions (a run that
    predicts nothing leaves nothing), appended to and synced after every batch."""

    def __init__(
        self, out: Path, sidecar: Path, provenance: dict[str, Any], spec: ModelSpec, csv_out: bool, *, resumed: bool
    ) -> None:
        self.out, self.sidecar, self.provenance, self.spec = out, sidecar, provenance, spec
        self.csv_out, self.resumed = csv_out, resumed
        self.fh: Any = None
        self.rows: Any = None
        self.writer: _CsvWriter | None = None

    def write(self, predictions: list[RowPrediction], digests: list[str]) -> None:
        """The batch's row digests, then its predictions, each synced: a kill between the
        two leaves digests ahead of the output, which a rerun trims."""
        with writable(self.out):
            if self.fh is None:
                self._open()
            self.rows.write("".join(d + "\n" for d in digests))
            self.rows.flush()
            os.fsync(self.rows.fileno())
            for p in predictions:
                if self.writer is not None:
                    self.writer.write(p)
                else:
                    self.fh.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def _open(self) -> None:
        if not self.resumed:  # a resumed output keeps its provenance as it was written
            with replaced_atomically(self.sidecar) as tmp:
                tmp.write_text(json.dumps(self.provenance, indent=1))
        header = _csv_header(str(self.out)) if self.resumed and self.csv_out else None
        self.rows = open(_rows_path(self.out), "a" if self.resumed else "w", encoding="utf-8")  # noqa: SIM115
        self.fh = open(self.out, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
        if self.csv_out:
            self.writer = _CsvWriter(self.fh, self.spec, new=not self.resumed, header=header)

    def close(self) -> None:
        for fh in (self.fh, self.rows):
            if fh is not None:
                fh.close()


def _csv_header(path: str) -> list[str] | None:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), None)


def _example(
    predictor: Predictor, line: int, row: dict[str, Any], problem: str | None, inp: Path
) -> tuple[Any, str | None]:
    if problem is not None:
        return None, problem
    try:
        (ex,) = predictor.examples([row], start=line)
    except UserError as e:
        return None, str(e).replace(f"row {line}", f"{inp}:{line}")
    return ex, None


def _no_usable_rows(inp: Path, spec: ModelSpec, tally: _Tally) -> str:
    if not tally.bad:
        return f"--input '{inp}' has no rows; give a JSONL or CSV file with the text in column {spec.input_column!r}"
    return (
        f"--input '{inp}': no row has text in column {spec.input_column!r} ({len(tally.bad)} bad rows, first: "
        f"{tally.bad[0]}); the study reads the text from {spec.input_column!r} (data.input_column): rename the "
        "column, or give a file written for this study"
    )


def _check_paths(inp: Path, out: Path) -> None:
    if not inp.is_file():
        raise UserError(f"--input '{inp}' is not a file; give a JSONL or CSV file")
    if inp.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise UserError(f"--input '{inp}' has extension '{inp.suffix}'; use .jsonl or .csv")
    if not out.parent.exists():
        raise UserError(f"--output '{out}': folder '{out.parent}' does not exist; create it first")
    if out.is_dir():
        raise UserError(f"--output '{out}' is a directory; give a file name (.jsonl or .csv)")
    if out.resolve() == inp.resolve():
        raise UserError("--output is the --input file; give another file")


def _written_ids(out: Path, csv_out: bool) -> list[str]:
    """The ids already in the output, in order (a rerun resumes after them); a last line a
    kill cut short is dropped."""
    if not out.exists() or out.stat().st_size == 0:
        return []
    data = out.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        out.write_bytes(data)
    text = data.decode("utf-8")
    if csv_out:
        return [r["id"] for r in csv.DictReader(io.StringIO(text, newline=""))]
    ids = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            ids.append(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"--output '{out}' line {n} is not a prediction of this tool; choose a new output file"
            ) from None
    return ids


def _rows_path(out: Path) -> Path:
    return out.with_name(out.name + ".rows")


def _written_digests(out: Path, n: int) -> list[str] | None:
    """The digests of the ``n`` rows the output holds (trimmed to them: a kill may leave
    more), or None when there are none for them (an output of an earlier version)."""
    path = _rows_path(out)
    if n == 0 or not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < n:
        return None
    if len(lines) > n:
        with replaced_atomically(path) as tmp:
            tmp.write_text("".join(d + "\n" for d in lines[:n]), encoding="utf-8")
    return lines[:n]


class _CsvWriter:
    """CSV predictions: id, the input's other columns (passed through, as in JSONL), a
    column per field, each chosen label's probability (label scoring), and ``invalid``
    (the answers that were no label, as JSON). The header is the first row's (or, resuming,
    the file's own)."""

    def __init__(self, fh: Any, spec: ModelSpec, new: bool, header: list[str] | None = None) -> None:
        self.spec, self.writer, self.new = spec, csv.writer(fh), new
        self.columns = header

    def write(self, p: RowPrediction) -> None:
        s = self.spec
        if self.columns is None:
            passed = [k for k in p.extra if k not in ("id", "invalid", *s.fields) and not k.endswith("_probability")]
            self.columns = [
                "id",
                *passed,
                *s.fields,
                *[f"{f}_probability" for f in s.fields if s.method == "score"],
                "invalid",
            ]
            if self.new:
                self.writer.writerow(self.columns)
        cells = {
            "id": p.id,
            **dict(p.extra.items()),
            **{f: p.labels[f] or "" for f in s.fields},
            **{f"{f}_probability": (p.probs or {}).get(f, {}).get(p.labels[f] or "", "") for f in s.fields},
            "invalid": json.dumps(p.invalid) if p.invalid else "",
        }
        self.writer.writerow(["" if cells.get(c) is None else cells.get(c, "") for c in self.columns])


class RowReader:
    """Rows of a JSONL or CSV file, streamed: (file line, row, problem) in chunks."""

    def __init__(self, path: Path, text_column: str) -> None:
        self.path, self.text_column = path, text_column
        self.size = max(path.stat().st_size, 1)
        self.position = 0
        self.done = False

    @property
    def fraction(self) -> float:
        return min(1.0, self.position / self.size)

    def rows(self) -> Iterator[tuple[int, dict[str, Any], str | None]]:
        with open(self.path, "rb") as raw:
            if self.path.suffix.lower() == ".csv":
                yield from self._csv(raw)
            else:
                yield from self._jsonl(raw)
        self.done = True
        self.position = self.size

    def _jsonl(self, raw: Any) -> Iterator[tuple[int, dict[str, Any], str | None]]:
        for n, line in enumerate(raw, start=1):
            self.position += len(line)
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8").strip()
            except UnicodeDecodeError as e:
                # As training data with such a byte is refused: a report is not guessed at.
                yield n, {}, f"{self.path}:{n}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8"
                continue
            if not text:
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, {}, f"{self.path}:{n}: not JSON ({e.msg})"
                continue
            if not isinstance(row, dict):
                yield n, {}, f"{self.path}:{n}: not a JSON object"
                continue
            yield n, row, None

    def _csv(self, raw: Any) -> Iterator[tuple[int, dict[str, Any], str | None]]:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(stream)
        start = 2
        try:
            for row in reader:
                self.position = raw.tell()
                yield start, dict(row), None
                start = reader.line_num + 1
        except UnicodeDecodeError as e:
            raise UserError(
                f"--input '{self.path}' is not UTF-8 text (byte {e.start}, near line {start}); re-save it as UTF-8"
            ) from None

    def chunks(self, n: int) -> Iterator[list[tuple[int, dict[str, Any], str | None]]]:
        chunk: list[tuple[int, dict[str, Any], str | None]] = []
        for item in self.rows():
            chunk.append(item)
            if len(chunk) >= n:
                yield chunk
                chunk = []
        self.done = True
        if chunk:
            yield chunk
