"""Checkpoint folders: one per point of the search space, never per trial number.

    <train.output_dir>/<study>/<point>/checkpoint-<step>/   Trainer checkpoints
    <train.output_dir>/<study>/<point>/cooldown/            a rung's cool-down branch (discarded)
    <train.output_dir>/<study>/<point>/final-adapter/       the trained LoRA adapter
    <train.output_dir>/<study>/<point>/run_settings.json    batch after an OOM fallback

A retried trial (after a kill, an interruption or a failure) finds the checkpoints of
its point and resumes. Used by the scheduler (paths, pruning), the trial adapter (run
settings) and study bundles (what to copy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from optuna_search.core import file_sha256, point_dirname, replaced_atomically
from optuna_search.storage.study._storages import located, study_home

RUN_SETTINGS = "run_settings.json"
FINAL_ADAPTER = "final-adapter"


def study_checkpoints(output_dir: str | Path, study_name: str) -> Path:
    return Path(output_dir) / study_name


def point_checkpoints(output_dir: str | Path, study_name: str, point: dict[str, Any]) -> Path:
    return study_checkpoints(output_dir, study_name) / point_dirname(point)


# Trainer writes a checkpoint's files in this order: adapter, optimizer, scheduler, RNG
# state, and trainer_state.json last; a folder without it was cut short by a kill.
COMPLETE_MARKER = "trainer_state.json"
RESUME_FILES = ("optimizer.pt", "scheduler.pt", COMPLETE_MARKER)
"""What a resume needs besides the adapter: without the optimizer's state a resumed point
would go on with a fresh optimizer and diverge from an uninterrupted run."""


def is_complete(checkpoint: Path) -> bool:
    """Written to the end, with every file a resume needs (one edited out of a remote is
    not a checkpoint)."""
    return all((checkpoint / name).is_file() for name in RESUME_FILES)


def last_complete_checkpoint(folder: Path) -> tuple[Path | None, list[Path]]:
    """The newest checkpoint that was written to the end, and the folders newer than it
    that were not (a SIGKILL or power loss during the write). Trainer's own choice
    (``get_last_checkpoint``) is the highest step whatever its state, and resuming from a
    half-written one fails every retry of the point."""
    found = []
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = p.name.removeprefix("checkpoint-")
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    broken: list[Path] = []
    for _, p in sorted(found, reverse=True):
        if is_complete(p):
            return p, broken
        broken.append(p)
    return None, broken


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("checkpoint-"))


def resume_point(folder: Path) -> tuple[Path | None, int, list[Path]]:
    """The checkpoint a point resumes from (None: start), its step, and the folders a
    kill cut short, removed here (they are unusable, and in the way: Trainer would pick
    the highest step again)."""
    last, broken = last_complete_checkpoint(folder)
    for p in broken:
        shutil.rmtree(p, ignore_errors=True)
    return last, (checkpoint_step(last) if last else 0), broken


def checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """Trainer's state saved in a checkpoint: global_step, max_steps, log_history."""
    return json.loads((checkpoint / COMPLETE_MARKER).read_text())


def add_to_history(checkpoint: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the log history of a checkpoint's trainer state, replaced
    atomically (a kill leaves the old state or the new one: the checkpoint stays whole).
    A run resumed from it carries the entry on, as Trainer's own log lines."""
    state = checkpoint_state(checkpoint)
    state["log_history"].append(entry)
    with replaced_atomically(checkpoint / COMPLETE_MARKER) as tmp:
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def release(folder: Path) -> None:
    """A pruned point gives its checkpoints back (nothing of it is used again)."""
    shutil.rmtree(folder, ignore_errors=True)


def adapter_digest(adapter: Path) -> str | None:
    """SHA-256 of a saved adapter's weights (what `predict` and `export-model` check)."""
    weights = adapter / "adapter_model.safetensors"
    return file_sha256(weights) if weights.is_file() else None


def has_checkpoint(folder: Path) -> bool:
    """A point can resume: a checkpoint cut short by a kill does not count."""
    return last_complete_checkpoint(folder)[0] is not None


def remove_intermediate_checkpoints(folder: Path) -> None:
    """Once a point is finished (COMPLETE in the database, not before) its intermediate
    checkpoints are dead weight; its final adapter stays."""
    for p in folder.glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


RUN_SETTING_KEYS = ("batch_size", "gradient_accumulation", "eval_batch_size")


def read_run_settings(folder: Path) -> dict[str, int]:
    """The batches an earlier attempt fell back to after running out of memory ({} if
    none): per-device batch and accumulation (its checkpoints were written with that
    batch, so a resume must use it too) and the evaluation batch."""
    f = folder / RUN_SETTINGS
    if not f.exists():
        return {}
    return {k: int(v) for k, v in json.loads(f.read_text()).items() if k in RUN_SETTING_KEYS}


def restart_with_settings(folder: Path, batch_size: int, gradient_accumulation: int) -> None:
    """Start the point over with a new training batch: the old checkpoints replay another
    data order (an evaluation batch learned earlier is kept)."""
    kept = {k: v for k, v in read_run_settings(folder).items() if k == "eval_batch_size"}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_SETTINGS).write_text(
        json.dumps({**kept, "batch_size": batch_size, "gradient_accumulation": gradient_accumulation})
    )


def update_run_settings(folder: Path, **settings: int) -> None:
    """Change settings that leave the checkpoints valid (the evaluation batch): kept."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_SETTINGS).write_text(json.dumps({**read_run_settings(folder), **settings}))


def adapter_candidates(
    recorded: str | None,
    output_dir: str | Path,
    study_name: str,
    point: dict[str, Any],
    storage_url: str,
    location_dir: str | None = None,
) -> list[Path]:
    """Where a trial's final adapter may be on this machine, in order: under the checkpoints
    folder a command line names, the point's folder under the study's own checkpoints
    folder, and where the trial recorded it (a relative path from the study's home). The
    study's own copy comes before the recorded path: a study resumed from a bundle, pulled
    from a remote or moved has its adapters here, and the recorded path is the training
    folder's (seen: after a resume from a bundle on the same machine, "its adapter" named
    the original folder)."""
    out = []
    if location_dir:
        out.append(point_checkpoints(location_dir, study_name, point) / FINAL_ADAPTER)
    out.append(located(str(point_checkpoints(output_dir, study_name, point) / FINAL_ADAPTER), study_home(storage_url)))
    if recorded:
        out.append(located(recorded, study_home(storage_url)))
    return list(dict.fromkeys(out))


def adapter_here(candidates: list[Path]) -> Path | None:
    """The first candidate that holds an adapter (None: not on this machine)."""
    return next((c for c in candidates if (c / "adapter_config.json").is_file()), None)
