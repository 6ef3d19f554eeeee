"""Accelerator memory: what counts as running out of it, in which phase of a trial, and
giving it back before the next attempt loads a model.

An out-of-memory error surfaces as the library's exception (``torch.cuda.OutOfMemoryError``,
or a RuntimeError saying "out of memory" from bitsandbytes and older kernels) deep inside
Trainer or generate; :func:`oom_phase` turns it into the protocol's
:class:`~optuna_search.objectives._protocol.OutOfMemory`, which says where it happened
(load, train, evaluate) so that the retry changes the right thing."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator, MutableMapping

from optuna_search.objectives._protocol import OutOfMemory


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


@contextlib.contextmanager
def oom_phase(phase: str) -> Iterator[None]:
    """Inside the block, running out of memory raises ``OutOfMemory(message, phase)``;
    an ``OutOfMemory`` raised deeper (an evaluation inside training) keeps its phase."""
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise OutOfMemory(str(e), phase) from None
        raise


def release_memory() -> None:
    """Collect what the last attempt left (accelerate's patched ``forward`` and Trainer's
    callbacks make reference cycles that only the collector frees), then give the
    allocator's cached blocks back to the device."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def freeze_what_lives_on() -> None:
    """Before a process's first trial (and again after a :func:`thaw`): the objects alive
    then (the libraries' modules, the config, the data: 566,000 of them once torch,
    transformers and peft are imported) leave the collector's sight, so that each full
    collection, ours above and accelerate's at every ``Trainer.train``, walks only what
    trials make: 0.32 s a collection before on the 2-core machine, several per trial;
    2 µs after. What a trial leaves behind is created after the freeze and is collected
    as before."""
    global _FROZEN
    if not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN = True


_FROZEN = False


def thaw() -> None:
    """Undo :func:`freeze_what_lives_on` and collect: what was frozen and has died since
    is freed now, its accelerator memory given back."""
    global _FROZEN
    if _FROZEN:
        gc.unfreeze()
        _FROZEN = False
        release_memory()


@contextlib.contextmanager
def frozen_for_a_study() -> Iterator[None]:
    """One study's trials with what lives on frozen, thawed when the last study running
    in this process ends (also when a trial called directly froze it before): a process
    that lives on after the study (the Python API, a notebook) gets back what its caller
    dropped meanwhile, a model of theirs included."""
    global _STUDIES
    with _STUDIES_LOCK:
        freeze_what_lives_on()
        _STUDIES += 1
    try:
        yield
    finally:
        with _STUDIES_LOCK:
            _STUDIES -= 1
            if not _STUDIES:
                thaw()


_STUDIES = 0
_STUDIES_LOCK = threading.Lock()


def prefer_expandable_segments(environ: MutableMapping[str, str]) -> None:
    """Dynamic padding allocates tensors of a new shape at every batch; PyTorch's
    expandable segments keep that from fragmenting a 15 GB T4 into "out of memory" with
    gigabytes free. Set before CUDA starts (the CLI's first act), unless the user chose."""
    environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
