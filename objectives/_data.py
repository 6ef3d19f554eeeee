"""Load labelled bug reports (JSONL or CSV), parse and normalise their labels.

Two row formats:
- instruction: ``{"instruction", "input", "output"}`` where ``output`` holds
  ``Field: value`` lines (the format of ../shared/data/game-bugs/);
- columns: one column per label field (CSV or JSONL), e.g. ``severity,component,...``.

Every problem in a file (malformed JSON, missing text, missing label) is collected with
its file and line number and raised once, before anything is written to a study.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna_search.search._errors import UserError

SPLITS = ("train", "validation", "test")
# Beyond this many bad rows in a file, listing more helps nobody.
MAX_LISTED_PROBLEMS = 10
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
    found: dict[str, str | None] = {f: None for f in fields}
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
        from optuna_search.objectives._demo import builtin_data_path

        return builtin_data_path(path[len("builtin:"):])
    return Path(path).expanduser()


def read_rows(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from a .jsonl/.json or .csv file."""
    if not path.exists():
        raise UserError(
            f"{what} file '{path}' does not exist; fix the path in your config "
            f"(or pass --set {what}=PATH)"
        )
    if path.is_dir():
        raise UserError(f"{what} = '{path}' is a directory; give a .jsonl or .csv file")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise UserError(f"{what} file '{path}' is not readable (permission denied); fix its permissions") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file '{path}' is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        # DictReader's line_num counts the header as line 1.
        return [(i + 2, dict(row)) for i, row in enumerate(reader)]
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
    _raise_problems(problems, f"{what} file '{path}' has malformed lines; fix or remove them:")
    if not rows:
        raise UserError(f"{what} file '{path}' has no rows; give a file with labelled examples")
    return rows


def load_split(
    split: str,
    path_text: str,
    *,
    fields: list[str],
    data_format: str = "auto",
    instruction_column: str = "instruction",
    input_column: str = "input",
    output_column: str = "output",
    default_instruction: str = "",
    label_map: dict[str, dict[str, str]] | None = None,
) -> Split:
    what = f"data.{split}"
    path = resolve_data_path(path_text)
    rows = read_rows(path, what)
    fmt = data_format
    if fmt == "auto":
        fmt = "instruction" if output_column in rows[0][1] else "columns"
    maps = {
        f: {normalise_label(k): normalise_label(v) for k, v in (label_map or {}).get(f, {}).items()}
        for f in fields
    }
    examples, problems, seen_ids = [], [], set()
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        text = row.get(input_column)
        if not isinstance(text, str):
            problems.append(f"{where}: no text column {input_column!r} (set data.input_column)")
            continue
        instruction = row.get(instruction_column)
        instruction = instruction if isinstance(instruction, str) and instruction.strip() else default_instruction
        if fmt == "instruction":
            raw = row.get(output_column)
            if not isinstance(raw, str):
                problems.append(f"{where}: no {output_column!r} column with 'Field: value' lines")
                continue
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
            problems.append(f"{where}: no parseable label for {', '.join(missing)} (expected a {how})")
            continue
        labels = {f: maps[f].get(v, v) for f, v in labels.items()}  # type: ignore[union-attr]
        ex_id = str(row["id"]) if "id" in row and row["id"] not in (None, "") else f"{path.name}:{lineno}"
        if ex_id in seen_ids:
            problems.append(f"{where}: duplicate example id {ex_id!r}; ids must be unique within a file")
            continue
        seen_ids.add(ex_id)
        examples.append(Example(ex_id, instruction, text, labels, lineno))  # type: ignore[arg-type]
    _raise_problems(problems, f"{what} file '{path}' has rows that cannot be used; fix or remove them:")
    return Split(split, str(path), examples)


def load_dataset_from_config(data_cfg: Any) -> Dataset:
    """Load and check all three splits named by a ``[data]`` config section."""
    kwargs = dict(
        fields=list(data_cfg.fields),
        data_format=data_cfg.format,
        instruction_column=data_cfg.instruction_column,
        input_column=data_cfg.input_column,
        output_column=data_cfg.output_column,
        default_instruction=data_cfg.default_instruction,
        label_map=data_cfg.label_map,
    )
    splits = {s: load_split(s, getattr(data_cfg, s), **kwargs) for s in SPLITS}
    ds = Dataset(list(data_cfg.fields), splits)
    ds.vocab = check_label_vocabularies(ds, data_cfg.labels)
    return ds


def check_label_vocabularies(ds: Dataset, declared: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """Every evaluation label must be learnable: seen in training (and declared, if a set
    is declared). This is the check that catches a relabelled training file whose
    vocabulary silently differs from the test set's."""
    problems, vocab = [], {}
    for f in ds.fields:
        train_counts = ds.train.label_counts(f)
        allowed = (
            [normalise_label(x) for x in declared[f]] if declared and f in declared else sorted(train_counts)
        )
        vocab[f] = allowed
        if declared and f in declared:
            outside = {k: v for k, v in train_counts.items() if k not in allowed}
            if outside:
                problems.append(
                    f"{f}: train has labels outside the declared set {allowed}: {_fmt_counts(outside)}"
                )
        for split in ("validation", "test"):
            counts = ds.splits[split].label_counts(f)
            unseen = {k: v for k, v in counts.items() if k not in train_counts or k not in allowed}
            if unseen:
                problems.append(
                    f"{f}: {split} has labels never seen in train: {_fmt_counts(unseen)} "
                    f"(train has {_fmt_counts(train_counts)})"
                )
    if problems:
        raise UserError(
            "label vocabularies do not match across splits; relabel the data or map old labels "
            "to new ones with [data.label_map] (e.g. label_map.severity = { minor = \"low\" }):",
            problems,
        )
    return vocab


def select_eval_subset(test: Split, num_samples: int, seed: int) -> list[dict[str, str]]:
    """The fixed evaluation subset: ``num_samples`` examples of the test split picked by
    ``seed`` (0 = all), as ``{"id", "sha256"}`` records in file order."""
    n = len(test.examples)
    if num_samples == 0 or num_samples >= n:
        idx = list(range(n))
    else:
        idx = sorted(random.Random(seed).sample(range(n), num_samples))
    return [{"id": test.examples[i].id, "sha256": test.examples[i].sha256} for i in idx]


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
