"""Load labelled bug reports (JSONL or CSV), parse and normalise their labels.

Two row formats:
- instruction: ``{"instruction", "input", "output"}`` where ``output`` holds
  ``Field: value`` lines (the format of ../shared/data/game-bugs/);
- columns: one column per label field (CSV or JSONL), e.g. ``severity,component,...``.

Every problem in every file (malformed JSON, missing text, missing label) and, computed on
the usable rows, every label-vocabulary mismatch is collected with its file and line and
raised once, before anything is written to a study.

Reports longer than ``max_input_chars`` are cut when they are read: a model only ever
sees the first ``model.max_length`` tokens of a report, so memory stays proportional to
what is used even when a row holds megabytes of pasted logs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna_search.core import UserError, file_sha256
from optuna_search.objectives._demo_data import builtin_data_path

SPLITS = ("train", "validation", "test")
# Beyond this many bad rows in a file, listing more helps nobody.
MAX_LISTED_PROBLEMS = 10
# A token covers at least one character of a report in practice (and usually four or
# more), so cutting a report at this many characters per token of model.max_length
# never removes text the model would have seen.
CHARS_PER_TOKEN_BOUND = 16
_LABEL_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z _-]*?)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class Example:
    id: str
    instruction: str
    input: str
    labels: dict[str, str]
    line: int

    @property
    def sha256(self) -> str:
        """Hash of everything that defines the example: text and gold labels."""
        payload = json.dumps(
            {"instruction": self.instruction, "input": self.input, "labels": self.labels},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class Split:
    name: str
    path: str
    examples: list[Example]
    cut_inputs: int = 0
    """Rows whose report was cut at load time (longer than max_input_chars)."""

    def label_counts(self, field_name: str) -> Counter:
        return Counter(e.labels[field_name] for e in self.examples)


@dataclass
class Dataset:
    """The three splits plus the label vocabulary of every field."""

    fields: list[str]
    splits: dict[str, Split]
    vocab: dict[str, list[str]] = field(default_factory=dict)

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def validation(self) -> Split:
        return self.splits["validation"]

    @property
    def test(self) -> Split:
        return self.splits["test"]


def normalise_label(text: str) -> str:
    """Labels compare case- and whitespace-insensitively: ' High ' == 'high'."""
    return " ".join(str(text).split()).lower()


def parse_label_lines(text: str, fields: list[str]) -> dict[str, str | None]:
    """Read ``Field: value`` lines; a field without a line (or with an empty value) is None.

    The first line for a field wins, so a trailing free-text summary cannot override it.
    """
    found: dict[str, str | None] = dict.fromkeys(fields)
    wanted = {normalise_label(f): f for f in fields}
    for line in str(text).splitlines():
        m = _LABEL_LINE.match(line)
        if not m:
            continue
        name = wanted.get(normalise_label(m.group(1)))
        value = normalise_label(m.group(2))
        if name is not None and found[name] is None and value:
            found[name] = value
    return found


def resolve_data_path(path: str) -> Path:
    if path.startswith("builtin:"):
        return builtin_data_path(path[len("builtin:") :])
    return Path(path).expanduser()


def read_rows(path: Path, what: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, row) pairs from a .jsonl/.json or .csv file, and a problem line per
    malformed line. A missing or unreadable file is raised at once."""
    if not path.exists():
        raise UserError(f"{what} file '{path}' does not exist; fix the path in your config (or pass --set {what}=PATH)")
    if path.is_dir():
        raise UserError(f"{what} = '{path}' is a directory; give a .jsonl or .csv file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is just skipped
    except PermissionError:
        raise UserError(f"{what} file '{path}' is not readable (permission denied); fix its permissions") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file '{path}' is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, text)
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise UserError(f"{what} file '{path}' has extension '{suffix}'; use .jsonl or .csv")
    rows, problems = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            continue
        rows.append((lineno, row))
    if not rows and not problems:
        raise UserError(f"{what} file '{path}' has no rows; give a file with labelled examples")
    return rows, problems


def _csv_rows(path: Path, text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Rows of a CSV file with the file line each starts on. The csv module reads the
    file itself, so a quoted cell may hold newlines (spreadsheets and Python's csv
    writer produce them)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, problems, start = [], [], 2
    try:
        for row in reader:
            if None in row:
                problems.append(f"{path}:{start}: more cells than the header has columns")
            elif any(v is None for v in row.values()):
                problems.append(f"{path}:{start}: fewer cells than the header has columns")
            else:
                rows.append((start, dict(row)))
            start = reader.line_num + 1
    except csv.Error as e:
        problems.append(f"{path}:{reader.line_num}: malformed CSV ({e})")
    if not rows and not problems:
        raise UserError(f"file '{path}' has no rows; give a file with labelled examples")
    return rows, problems


def load_split(split: str, path_text: str, *, fields: list[str], **options: Any) -> Split:
    """Read one split; raise every unusable row at once (see :func:`read_split`)."""
    result, problems = read_split(split, path_text, fields=fields, **options)
    _raise_problems(problems, f"data.{split} file '{result.path}' has rows that cannot be used; fix or remove them:")
    return result


def read_split(
    split: str,
    path_text: str,
    *,
    fields: list[str],
    data_format: str = "auto",
    instruction_column: str = "instruction",
    input_column: str = "input",
    output_column: str = "output",
    default_instruction: str = "",
    id_column: str = "id",
    label_map: dict[str, dict[str, str]] | None = None,
    max_input_chars: int = 0,
) -> tuple[Split, list[str]]:
    """The usable rows of one split and a problem line (file:line) per unusable row."""
    path = resolve_data_path(path_text)
    rows, problems = read_rows(path, f"data.{split}")
    fmt = data_format
    if fmt == "auto":
        fmt = "instruction" if not rows or output_column in rows[0][1] else "columns"
    maps = {
        f: {normalise_label(k): normalise_label(v) for k, v in (label_map or {}).get(f, {}).items()} for f in fields
    }
    examples, seen_ids, cut = [], set(), 0
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        text = row.get(input_column)
        if not isinstance(text, str):
            problems.append(f"{where}: no text column {input_column!r} (set data.input_column)")
            continue
        if max_input_chars and len(text) > max_input_chars:
            text, cut = text[:max_input_chars], cut + 1
        instruction = row.get(instruction_column)
        instruction = instruction if isinstance(instruction, str) and instruction.strip() else default_instruction
        labels, problem = _row_labels(row, fmt, fields, output_column)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        labels = {f: maps[f].get(v, v) for f, v in labels.items()}
        given = row.get(id_column)
        ex_id = str(given) if given not in (None, "") else f"{path.name}:{lineno}"
        if ex_id in seen_ids:
            problems.append(f"{where}: duplicate example id {ex_id!r}; ids must be unique within a file")
            continue
        seen_ids.add(ex_id)
        examples.append(Example(ex_id, instruction, text, labels, lineno))
    return Split(split, str(path), examples, cut), problems


def _row_labels(
    row: dict[str, Any], fmt: str, fields: list[str], output_column: str
) -> tuple[dict[str, str], str | None]:
    if fmt == "instruction":
        raw = row.get(output_column)
        if not isinstance(raw, str):
            return {}, f"no {output_column!r} column with 'Field: value' lines"
        labels = parse_label_lines(raw, fields)
    else:
        lowered = {str(k).lower(): v for k, v in row.items()}
        labels = {
            f: (normalise_label(lowered[f.lower()]) if lowered.get(f.lower()) not in (None, "") else None)
            for f in fields
        }
    missing = [f for f, v in labels.items() if v is None]
    if missing:
        how = (
            f"'{missing[0].capitalize()}: <label>' line in {output_column!r}"
            if fmt == "instruction"
            else f"value in column {missing[0]!r}"
        )
        return {}, f"no parseable label for {', '.join(missing)} (expected a {how})"
    return labels, None  # type: ignore[return-value]


def load_dataset_from_config(data_cfg: Any, max_length: int = 0) -> Dataset:
    """Load and check all three splits named by a ``[data]`` config section: every
    unusable row of every file and, on the usable rows, every vocabulary mismatch, in
    one error. ``max_length`` (tokens) bounds the report text kept per row."""
    options = {
        "fields": list(data_cfg.fields),
        "data_format": data_cfg.format,
        "instruction_column": data_cfg.instruction_column,
        "input_column": data_cfg.input_column,
        "output_column": data_cfg.output_column,
        "default_instruction": data_cfg.default_instruction,
        "id_column": data_cfg.id_column,
        "label_map": data_cfg.label_map,
        "max_input_chars": max_length * CHARS_PER_TOKEN_BOUND,
    }
    splits, problems = {}, []
    for s in SPLITS:
        splits[s], split_problems = read_split(s, getattr(data_cfg, s), **options)
        problems += _capped(split_problems, f"data.{s} '{splits[s].path}'")
    ds = Dataset(list(data_cfg.fields), splits)
    vocab, vocab_problems = label_vocabularies(ds, data_cfg.labels)
    ds.vocab = vocab
    if vocab_problems:
        problems += vocab_problems
        problems.append(
            "relabel the data or map old labels to new ones with [data.label_map] "
            '(e.g. label_map.severity = { minor = "low" })'
        )
    if problems:
        raise UserError("the data cannot be used as it is; fix these (all problems found are listed):", problems)
    return ds


def _capped(problems: list[str], what: str) -> list[str]:
    if len(problems) <= MAX_LISTED_PROBLEMS:
        return problems
    return problems[:MAX_LISTED_PROBLEMS] + [f"... and {len(problems) - MAX_LISTED_PROBLEMS} more rows in {what}"]


def label_vocabularies(ds: Dataset, declared: dict[str, list[str]] | None) -> tuple[dict[str, list[str]], list[str]]:
    """Every evaluation label must be learnable: seen in training (and declared, if a set
    is declared). This is the check that catches a relabelled training file whose
    vocabulary silently differs from the test set's. Returns (vocab, problems)."""
    problems, vocab = [], {}
    for f in ds.fields:
        train_counts = ds.train.label_counts(f)
        allowed = [normalise_label(x) for x in declared[f]] if declared and f in declared else sorted(train_counts)
        vocab[f] = allowed
        if declared and f in declared:
            outside = {k: v for k, v in train_counts.items() if k not in allowed}
            if outside:
                problems.append(f"{f}: train has labels outside the declared set {allowed}: {_fmt_counts(outside)}")
        for split in ("validation", "test"):
            counts = ds.splits[split].label_counts(f)
            if declared and f in declared:
                outside = {k: v for k, v in counts.items() if k not in allowed}
                if outside:
                    problems.append(
                        f"{f}: {split} has labels outside the declared set {allowed}: {_fmt_counts(outside)}"
                    )
            declared_here = bool(declared and f in declared)
            unseen = {k: v for k, v in counts.items() if k not in train_counts and (not declared_here or k in allowed)}
            if unseen:
                problems.append(
                    f"{f}: {split} has labels never seen in train: {_fmt_counts(unseen)} "
                    f"(train has {_fmt_counts(train_counts)})"
                )
    return vocab, problems


def select_eval_subset(
    split: Split,
    num_samples: int,
    seed: int,
    exclude: set[str] | frozenset[str] = frozenset(),
    *,
    stratify: bool = False,
    fields: list[str] | None = None,
) -> list[dict[str, str]]:
    """A fixed evaluation subset: ``num_samples`` examples of the split picked by
    ``seed`` (0 = all), leaving out the ids in ``exclude``, as ``{"id", "sha256"}``
    records in file order; stratified by the label combination when asked."""
    pool = [e for e in split.examples if e.id not in exclude]
    picked = (
        stratified_sample(pool, num_samples, seed, fields or [])
        if stratify
        else sample_examples(pool, num_samples, seed)
    )
    return [{"id": e.id, "sha256": e.sha256} for e in picked]


def sample_examples(examples: list[Example], n: int, seed: int) -> list[Example]:
    """``n`` examples picked by ``seed``, in their original order (0 or n >= len = all)."""
    if n == 0 or n >= len(examples):
        return list(examples)
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), n))]


def stratified_sample(examples: list[Example], n: int, seed: int, fields: list[str]) -> list[Example]:
    """``n`` examples whose label combinations keep their shares in ``examples``
    (scikit-learn's stratified split), so rare labels are present in a small subset.
    Combinations too rare to split are pooled; when there are more combinations than
    ``n`` can hold, the first field's labels stratify instead; in file order."""
    if n == 0 or n >= len(examples):
        return list(examples)
    from sklearn.model_selection import train_test_split

    index = list(range(len(examples)))
    for key_fields in (fields, fields[:1]):
        keys = [tuple(examples[i].labels[f] for f in key_fields) for i in index]
        counts = Counter(keys)
        keys = [k if counts[k] >= 2 else ("<rare>",) for k in keys]
        if Counter(keys)[("<rare>",)] == 1:  # one rare example cannot be its own stratum
            common = Counter(keys).most_common(1)[0][0]
            keys = [common if k == ("<rare>",) else k for k in keys]
        try:
            chosen, _ = train_test_split(index, train_size=n, random_state=seed, stratify=keys)
        except ValueError:
            continue  # more strata than n examples: a coarser key
        return [examples[i] for i in sorted(chosen)]
    return sample_examples(examples, n, seed)


def resolve_eval_subset(test: Split, subset: list[dict[str, str]]) -> list[Example]:
    """The examples of a stored subset, checking that each still has the same content."""
    by_id = {e.id: e for e in test.examples}
    missing = [s["id"] for s in subset if s["id"] not in by_id]
    changed = [s["id"] for s in subset if s["id"] in by_id and by_id[s["id"]].sha256 != s["sha256"]]
    if missing or changed:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ids missing from the test file (e.g. {missing[:3]})")
        if changed:
            parts.append(f"{len(changed)} examples whose text or labels changed (e.g. {changed[:3]})")
        raise UserError(
            f"the test file '{test.path}' no longer contains the study's evaluation subset: "
            + "; ".join(parts)
            + ". Restore the original test file, or start a new study (--study-name) for the new data"
        )
    return [by_id[s["id"]] for s in subset]


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k!r} x{v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _raise_problems(problems: list[str], headline: str) -> None:
    if not problems:
        return
    shown = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown)} more")
    raise UserError(headline, shown)


@dataclass
class StudyData:
    """The data as a study uses it: the training examples it trains on, the validation
    pool, and the fixed test and validation subsets (ids + SHA-256, and the examples)."""

    dataset: Dataset
    test_subset: list[dict[str, str]]
    validation_subset: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)
    """Things a user should hear (e.g. a subset smaller than asked for)."""
    digests: dict[str, str] = field(default_factory=dict)
    """SHA-256 of the train, validation and test files."""

    @property
    def test_examples(self) -> list[Example]:
        return resolve_eval_subset(self.dataset.test, self.test_subset)

    @property
    def validation_examples(self) -> list[Example]:
        return resolve_eval_subset(self.dataset.validation, self.validation_subset)


def prepare_study_data(data_cfg: Any, eval_cfg: Any, *, train_seed: int, max_length: int) -> StudyData:
    """Load the data and fix what a study evaluates on. Deterministic in the config, so
    every worker, rank and session derives the same subsets (and the study checks them
    against the ones it stored when it was created).

    - test subset: ``eval.num_samples`` examples of the test file picked by ``eval.seed``;
    - validation: when the validation file *is* the test file, the rows outside the test
      subset (the test examples are never used to choose anything), else the whole file;
      the validation subset is ``eval.validation_samples`` of those;
    - training: ``data.train_samples`` examples of the training file picked by
      ``train.seed`` (0 = all);
    - with ``eval.stratify`` the subsets keep the label combinations' shares."""
    ds = load_dataset_from_config(data_cfg, max_length)
    notes = []
    if eval_cfg.num_samples > len(ds.test.examples):
        notes.append(
            f"eval.num_samples = {eval_cfg.num_samples} but the test file has {len(ds.test.examples)} "
            f"examples: evaluating on all {len(ds.test.examples)}"
        )
    strat = {"stratify": eval_cfg.stratify, "fields": ds.fields}
    test_subset = select_eval_subset(ds.test, eval_cfg.num_samples, eval_cfg.seed, **strat)
    if Path(ds.validation.path).resolve() == Path(ds.test.path).resolve():
        taken = {s["id"] for s in test_subset}
        pool = [e for e in ds.validation.examples if e.id not in taken]
        if pool:
            ds.splits["validation"] = Split("validation", ds.validation.path, pool, ds.validation.cut_inputs)
            notes.append(f"validation is the test file: validating on its {len(pool)} rows outside the test subset")
        elif eval_cfg.objective_split == "validation":
            raise UserError(
                'eval.objective_split = "validation" but data.validation is the test file and the test '
                "subset takes all of it: the test examples would choose the winner; lower eval.num_samples "
                "or give a separate validation file"
            )
        else:
            notes.append(
                "validation is the test file and the test subset is all of it: the validation points score "
                "the test examples (fine for curves, never for choosing)"
            )
    if eval_cfg.validation_samples > len(ds.validation.examples):
        notes.append(
            f"eval.validation_samples = {eval_cfg.validation_samples} but there are {len(ds.validation.examples)} "
            f"validation examples: validating on all of them"
        )
    validation_subset = select_eval_subset(ds.validation, eval_cfg.validation_samples, eval_cfg.seed, **strat)
    if data_cfg.train_samples:
        train = ds.train
        ds.splits["train"] = Split(
            "train", train.path, sample_examples(train.examples, data_cfg.train_samples, train_seed), train.cut_inputs
        )
    digests = {s: file_sha256(Path(ds.splits[s].path)) for s in SPLITS}
    return StudyData(ds, test_subset, validation_subset, notes, digests)
