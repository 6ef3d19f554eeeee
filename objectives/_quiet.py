"""Keep the libraries' known noise off the user's terminal, and nothing else.

Progress bars and INFO chatter of transformers/datasets/peft go; warnings are filtered
one by one, by message and module, for those that are expected in this tool's normal
operation and say nothing actionable. Any other warning (a real peft, bitsandbytes or
torch problem) still reaches the user.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# (message regex, module regex) of warnings that this tool triggers by design.
EXPECTED_WARNINGS = (
    # Optuna marks the heartbeat machinery and metric names "experimental"; this tool
    # relies on them deliberately and pins their behaviour in tests/test_internals.py.
    # Any other experimental feature still warns.
    (
        r".*\b(RetryHeartbeatStaleTrialCallback|fail_stale_trials|set_metric_names|retried_trial_number|retry_history) "
        r"is experimental",
        r"",
    ),  # any caller: the names are specific enough
    # Optuna: heartbeat + ask/tell is how trials run here (see search/_trial.py).
    (r"Heartbeat of storage is supposed to be used with Study\.optimize", r"optuna\."),
    # GridSampler warns that a grid point is chosen by us rather than by itself.
    (r"`GridSampler` is re-evaluating a configuration", r"optuna\."),
    # Optuna: ask() with the study's fixed search space warns per parameter it samples
    # independently before the multivariate model has data.
    (r"The parameter .* in trial#\d+ is sampled independently", r"optuna\."),
    # transformers: the 4-bit base is cast for training by prepare_model_for_kbit_training.
    (r"The model is already on multiple devices", r"transformers\."),
    # bitsandbytes on CPU: fp32 compute dtype is the right one there.
    (r"Input type into Linear4bit is torch\.float16", r"bitsandbytes\."),
    # torch: peft's gradient checkpointing passes use_reentrant explicitly; older paths warn.
    (r"torch\.utils\.checkpoint: the use_reentrant parameter", r"torch\."),
    # peft reads transformers' old property name (renamed is_activation_checkpointing in v5).
    (r"`is_gradient_checkpointing` is deprecated", r"transformers\."),
    # bitsandbytes on CPU: the kaggle presets' paged 8-bit AdamW runs unpaged there (the
    # README says so; nothing to do about it).
    (r"Paged optimizers are not supported on CPU", r"bitsandbytes\."),
    # transformers: caching is switched off while gradient checkpointing trains.
    (r"`use_cache=True` is incompatible with gradient checkpointing", r"transformers\."),
)


# (logger, message substring) of log records that say nothing actionable here.
EXPECTED_LOG_RECORDS = (
    # bitsandbytes on CPU offers a faster kernel from the Hugging Face hub's
    # kernels-community: a run-time download, which this tool never makes.
    ("bitsandbytes.backends.cpu.ops", "from kernels-community"),
)


class _DropExpected(logging.Filter):
    def __init__(self, substring: str) -> None:
        super().__init__()
        self.substring = substring

    def filter(self, record: logging.LogRecord) -> bool:
        return self.substring not in record.getMessage()


def no_loading_bars() -> None:
    """transformers' own progress bars (a "Loading weights" bar per trial) off, the hub's
    download bars on: a first download of a 14 GB model shows its progress, a trial's
    model load from disk says nothing. Called where models are loaded (transformers is
    imported there)."""
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()  # switches the hub's off too...
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() not in ("1", "true", "yes"):
        huggingface_hub.utils.enable_progress_bars()  # ...so back on for downloads


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Through the environment, so that transformers and datasets are not imported here:
    # a command that fails on bad input should not pay for them (they read these switches
    # when they are first imported). A user's own setting wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    # The hub's download progress stays on: a 14 GB model download must show progress.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "accelerate", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already (e.g. by a test): switch it directly
        sys.modules["transformers"].logging.set_verbosity_error()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    for message, module in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for name, substring in EXPECTED_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropExpected) and f.substring == substring for f in logger.filters):
            logger.addFilter(_DropExpected(substring))
