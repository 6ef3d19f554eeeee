"""From the measured trial to labels for new reports: :class:`Predictor` and `predict`.

A predictor is exactly what a trial was evaluated with: the study's prompt template,
instruction, label sets, ``model.max_length`` and truncation, evaluation method (label
scoring or greedy generation), and the base model loaded and quantized the same way,
with the trial's trained adapter on it (an ensemble: every member's adapter on one copy
of the base, soft voting). Its source is a study (``from_study``: the chosen trial, a
trial by number, or the stored ensemble) or a folder written by ``export-model``
(``from_dir``: no study needed). ``predict_file`` streams a JSONL/CSV input in batches
with progress on stderr, appends to its output after every batch (a rerun skips the ids
already written, so a kill loses at most one batch), and reports bad rows by line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from optuna_search.core import Config, TrialRecord, UserError, best_record
from optuna_search.core._text import format_seconds
from optuna_search.objectives._data import CHARS_PER_TOKEN_BOUND, Example
from optuna_search.objectives._evaluate import evaluate_examples
from optuna_search.objectives._model import load_adapters, load_tokenizer, resolve_model_source
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.search.loop._open import open_for_reading
from optuna_search.storage._checkpoints import FINAL_ADAPTER, adapter_digest, point_checkpoints
from optuna_search.storage._records import read_meta

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("optuna_search")
SPEC_FILE = "optuna-search-model.json"
SPEC_FORMAT = 1
BAD_ROW_POLICIES = ("skip", "fail")
CHUNK_BATCHES = 16
"""Rows read per chunk, in batches: within a chunk rows are batched by length, as evaluation does."""


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

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelSpec":
        d = {k: v for k, v in d.items() if k != "format"}
        d["members"] = [Member(**m) for m in d["members"]]
        return cls(**d)


@dataclass
class RowPrediction:
    id: str
    labels: dict[str, str | None]
    probs: dict[str, dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """The input row's other columns, passed through."""

    def to_record(self) -> dict[str, Any]:
        out = {"id": self.id, **{k: v for k, v in self.extra.items() if k not in ("id", "labels", "probs")}, "labels": self.labels}
        if self.probs is not None:
            out["probs"] = self.probs
        return out


# -- where a model comes from ---------------------------------------------------------------
def chosen_trial(study: "optuna.Study", config: Config, which: str | int) -> TrialRecord:
    """``best`` (the study's best trial, ``core.best_record``) or a trial number; only a
    COMPLETE trial with a trained adapter predicts."""
    fields = list(config.data.fields)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if str(which) == "best":
        if len(config.study.objectives) > 1:
            front = ", ".join(str(t.number) for t in study.best_trials)
            raise UserError(f"--trial best is ambiguous on a multi-objective study; pass one trial of the Pareto front: {front}")
        best = best_record([TrialRecord.from_trial(t, fields) for t in trials.values()], config.study.objectives[0],
                           config.eval.objective_split, fields)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet; run it first")
        number = best.number
    else:
        try:
            number = int(which)
        except ValueError:
            raise UserError(f"--trial {which!r} must be 'best' or a trial number") from None
    t = trials.get(number)
    if t is None:
        raise UserError(f"study {study.study_name!r} has no trial {number}; trials: 0-{max(trials, default=-1)}")
    if t.state.name != "COMPLETE":
        raise UserError(f"trial {number} is {t.state.name}, not COMPLETE: it has no evaluated model; pick a COMPLETE trial "
                        "(optuna-search status lists them)")
    record = TrialRecord.from_trial(t, fields)
    if record.duplicate_of is not None:
        return chosen_trial(study, config, record.duplicate_of)
    return record


def _adapter_dir(config: Config, record: TrialRecord, location_dir: str | None) -> str:
    """Where the trial's adapter is: under the checkpoints folder the command line names,
    else where the trial recorded it, else the point's folder under the study's own."""
    point = {k: record.params[k] for k in config.searched_keys() if k in record.params}
    candidates = []
    if location_dir:
        candidates.append(point_checkpoints(location_dir, config.study.name, point) / FINAL_ADAPTER)
    if record.adapter_dir:
        candidates.append(Path(record.adapter_dir))
    candidates.append(point_checkpoints(config.train.output_dir, config.study.name, point) / FINAL_ADAPTER)
    candidates = list(dict.fromkeys(candidates))
    for c in candidates:
        if (c / "adapter_config.json").is_file():
            return str(c)
    raise UserError(f"the adapter of trial {record.number} is not at {', '.join(str(c) for c in candidates)}; pass "
                    "--set train.output_dir=DIR where the study's checkpoints are (or export-model it where it ran)")


def study_labels(study: "optuna.Study", config: Config, record: TrialRecord) -> dict[str, list[str]]:
    """The label sets a study scored, in order: stored on the study (since this
    version), else read off the trial's confusion matrices."""
    meta = read_meta(study)
    if meta.labels:
        return meta.labels
    if record.test is not None and all(f in record.test.confusion for f in config.data.fields):
        return {f: [lab for lab in record.test.confusion[f]["labels"] if lab != "<invalid>"] for f in config.data.fields}
    raise UserError(f"study {study.study_name!r} stores no label sets; it cannot predict")


def spec_from_study(study: "optuna.Study", config: Config, *, trial: str | int = "best", ensemble: bool = False,
                    checkpoints_dir: str | None = None) -> ModelSpec:
    if ensemble:
        stored = [e for e in read_meta(study).ensembles or [] if e["method"] == "soft"]
        if not stored:
            raise UserError(f"study {study.study_name!r} has no stored soft-voting ensemble; create one with "
                            "`optuna-search ensemble --top K` (members evaluated by label scoring)")
        records = [chosen_trial(study, config, n) for n in stored[-1]["trials"]]
    else:
        records = [chosen_trial(study, config, trial)]
    members = []
    for r in records:
        adapter = _adapter_dir(config, r, checkpoints_dir)
        digest = adapter_digest(Path(adapter))
        if r.adapter_sha256 and digest != r.adapter_sha256:
            raise UserError(f"the adapter at '{adapter}' is not the one trial {r.number} trained (SHA-256 differs); "
                            "restore the study's checkpoints")
        members.append(Member(f"trial-{r.number}", r.number or 0, adapter, dict(r.params), digest))
    meta = read_meta(study)
    # As the trial evaluated: its compute dtype (the "auto" of the machine it trained on)
    # and evaluation batch.
    base = {**dataclasses.asdict(config.model), "compute_dtype": records[0].compute_dtype or config.model.compute_dtype}
    return ModelSpec(
        fields=list(config.data.fields), labels=study_labels(study, config, records[0]),
        default_instruction=config.data.default_instruction, instruction_column=config.data.instruction_column,
        input_column=config.data.input_column, chat_template=config.model.chat_template, max_length=config.model.max_length,
        method=config.eval.method, batch_size=records[0].eval_batch_size or config.eval.batch_size, base=base, members=members,
        provenance={"study": study.study_name, "trials": [r.number for r in records], "params": [dict(r.params) for r in records],
                    "voting": "soft" if ensemble else None, "eval_subset_sha256": records[0].eval_ids_sha256,
                    "data_sha256": meta.data_digest},
    )


def spec_from_dir(path: str | Path) -> ModelSpec:
    root = Path(path)
    f = root / SPEC_FILE
    if not f.is_file():
        raise UserError(f"'{root}' is not a model exported by optuna-search (no {SPEC_FILE}); pass a folder written by "
                        "`optuna-search export-model`")
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
            raise UserError(f"cannot load the base model {model_cfg.name_or_path!r} ({str(e).splitlines()[0]}); check "
                            "that it is reachable (a local folder, or the hub with a login for gated models)") from None

    @classmethod
    def from_study(cls, storage: str, study_name: str | None = None, *, trial: str | int = "best", ensemble: bool = False,
                   checkpoints_dir: str | None = None) -> "Predictor":
        location = {"storage.url": storage, **({"study.name": study_name} if study_name else {}),
                    **({"train.output_dir": checkpoints_dir} if checkpoints_dir else {})}
        opened = open_for_reading(location)
        return cls(spec_from_study(opened.study, opened.config, trial=trial, ensemble=ensemble, checkpoints_dir=checkpoints_dir))

    @classmethod
    def from_dir(cls, path: str | Path) -> "Predictor":
        return cls(spec_from_dir(path))

    def examples(self, rows: Iterable[dict[str, Any] | str], start: int = 1) -> list[Example]:
        """Rows as the study's examples (text cut as at load time; ids: the row's ``id``,
        else its number)."""
        s = self.spec
        out = []
        for i, row in enumerate(rows, start=start):
            row = {s.input_column: row} if isinstance(row, str) else row
            text = row.get(s.input_column)
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"row {i}: no text in column {s.input_column!r}")
            instruction = row.get(s.instruction_column)
            instruction = instruction if isinstance(instruction, str) and instruction.strip() else s.default_instruction
            ex_id = str(row["id"]) if row.get("id") not in (None, "") else str(i)
            out.append(Example(ex_id, instruction, text[: s.max_length * CHARS_PER_TOKEN_BOUND], {f: "" for f in s.fields}, i))
        return out

    def predict(self, rows: Iterable[dict[str, Any] | str]) -> list[RowPrediction]:
        """Labels (and, with label scoring, each label's probability) for each row: a
        dict with the study's text column (other columns are passed through) or the text."""
        rows = list(rows)
        examples = self.examples(rows)
        extras = [r if isinstance(r, dict) else {} for r in rows]
        return self._predict(examples, [{k: v for k, v in e.items() if k not in (self.spec.input_column,
                                                                                    self.spec.instruction_column)} for e in extras])

    def _predict(self, examples: list[Example], extras: list[dict[str, Any]]) -> list[RowPrediction]:
        s = self.spec
        per_member = []
        for m in s.members:
            self.model.set_adapter(m.name)
            per_member.append(evaluate_examples(self.model, self.tokenizer, self.encoder, examples, method=s.method,
                                                batch_size=s.batch_size, dtype=self.dtype))
        out = []
        for i, e in enumerate(examples):
            preds = [pm[i] for pm in per_member]
            if len(preds) == 1:
                labels, probs = dict(preds[0].predicted), preds[0].probs
            else:  # soft voting: the mean of the members' label probabilities
                probs = {f: {lab: sum(p.probs[f][lab] for p in preds) / len(preds) for lab in s.labels[f]} for f in s.fields}  # type: ignore[index]
                labels = {f: max(probs[f].items(), key=lambda kv: kv[1])[0] for f in s.fields}
            out.append(RowPrediction(e.id, labels, probs, extras[i]))
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
def predict_file(input_path: str, output_path: str, *, location: dict[str, str] | None, trial: str = "best",
                 ensemble: bool = False, model_dir: str | None = None, on_bad_row: str = "skip",
                 batch_size: int | None = None) -> str:
    """Predict every row of ``input_path`` into ``output_path`` (see the module docstring)."""
    inp, out = Path(input_path), Path(output_path)
    _check_paths(inp, out)
    if model_dir:
        spec = spec_from_dir(model_dir)
    else:
        opened = open_for_reading(location or {})
        spec = spec_from_study(opened.study, opened.config, trial=trial, ensemble=ensemble,
                               checkpoints_dir=(location or {}).get("train.output_dir"))
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size} must be a positive integer")
        spec = dataclasses.replace(spec, batch_size=batch_size)
    csv_out = out.suffix.lower() == ".csv"
    done = _written_ids(out, csv_out)
    predictor = Predictor(spec)
    sidecar = out.with_name(out.name + ".provenance.json")
    sidecar.write_text(json.dumps({"model": spec.provenance, "members": [dataclasses.asdict(m) for m in spec.members],
                                   "base": spec.base, "method": spec.method, "max_length": spec.max_length,
                                   "labels": spec.labels}, indent=1))
    reader = RowReader(inp, spec.input_column)
    bad: list[str] = []
    written = skipped = 0
    t0 = last = time.monotonic()
    with open(out, "a", encoding="utf-8", newline="") as fh:
        writer = _CsvWriter(fh, spec, new=not done) if csv_out else None
        for chunk in reader.chunks(spec.batch_size * CHUNK_BATCHES):
            rows, examples, extras = [], [], []
            for line, row, problem in chunk:
                if problem is None:
                    try:
                        (ex,) = predictor.examples([row], start=line)
                    except UserError as e:
                        problem = str(e).replace(f"row {line}", f"{inp}:{line}")
                if problem is not None:
                    if on_bad_row == "fail":
                        raise UserError(f"{problem}; fix the row, or pass --on-bad-row skip")
                    bad.append(problem)
                    continue
                if ex.id in done:
                    skipped += 1
                    continue
                rows.append(row)
                examples.append(ex)
                extras.append({k: v for k, v in row.items() if k not in (spec.input_column, spec.instruction_column)})
            if examples:
                for p in predictor._predict(examples, extras):
                    if writer is not None:
                        writer.write(p)
                    else:
                        fh.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                written += len(examples)
            now = time.monotonic()
            if now - last >= 5 or reader.done:
                last = now
                rate = written / max(now - t0, 1e-9)
                frac = reader.fraction
                eta = (now - t0) * (1 - frac) / frac if frac > 0 else float("nan")
                log.info("predict: %d rows written (%.1f rows/s), %.0f%% of the input, ETA %s", written, rate, 100 * frac,
                         format_seconds(eta))
    for b in bad[:10]:
        log.warning("skipped %s", b)
    return (f"wrote {written} predictions to {out}" + (f" ({skipped} already there from an earlier run)" if skipped else "")
            + (f"; skipped {len(bad)} bad rows (first: {bad[0]})" if bad else "") + f"; provenance: {sidecar}")


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


def _written_ids(out: Path, csv_out: bool) -> set[str]:
    """Ids already in the output (a rerun resumes); a last line a kill cut short is dropped."""
    if not out.exists() or out.stat().st_size == 0:
        return set()
    data = out.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        out.write_bytes(data)
    text = data.decode("utf-8")
    if csv_out:
        return {r["id"] for r in csv.DictReader(io.StringIO(text, newline=""))}
    ids = set()
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"--output '{out}' line {n} is not a prediction of this tool; choose a new output file") from None
    return ids


class _CsvWriter:
    def __init__(self, fh: Any, spec: ModelSpec, new: bool) -> None:
        self.columns = ["id"] + spec.fields + [f"{f}_probability" for f in spec.fields if spec.method == "score"]
        self.writer = csv.writer(fh)
        if new:
            self.writer.writerow(self.columns)

    def write(self, p: RowPrediction) -> None:
        probs = [(p.probs or {}).get(f, {}).get(p.labels[f] or "", "") for f in p.labels] if len(self.columns) > 1 + len(p.labels) else []
        self.writer.writerow([p.id] + [p.labels[f] or "" for f in p.labels] + probs)


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
            text = line.decode("utf-8-sig" if n == 1 else "utf-8", errors="replace").strip()
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
        for row in reader:
            self.position = raw.tell()
            yield start, dict(row), None
            start = reader.line_num + 1

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
