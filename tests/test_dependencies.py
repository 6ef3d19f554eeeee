"""pyproject's version floors match the APIs the code uses: lowering a floor below the
release that introduced one of them fails here, and the installed versions have them."""

import inspect
import re

import tomllib
from conftest import REPO
from packaging.version import Version

# API used -> (distribution, the first release that has it, how to check it is there).
FLOORS = {
    "TrainingArguments(train_sampling_strategy=...)": (
        "transformers",
        "5.2",
        lambda: "train_sampling_strategy" in inspect.signature(__import__("transformers").TrainingArguments).parameters,
    ),
    "TrainingArguments(warmup_steps=<ratio>)": (
        "transformers",
        "5.0",
        lambda: (
            __import__("transformers").TrainingArguments.__dataclass_fields__["warmup_steps"].type in (float, "float")
        ),
    ),
    "brier_score_loss(labels=..., scale_by_half=...)": (
        "scikit-learn",
        "1.7",
        lambda: (
            {"labels", "scale_by_half"}
            <= set(inspect.signature(__import__("sklearn.metrics", fromlist=["x"]).brier_score_loss).parameters)
        ),
    ),
    "RDBStorage(heartbeat_stale_trial_callback=...)": (
        "optuna",
        "4.9",
        lambda: (
            "heartbeat_stale_trial_callback" in inspect.signature(__import__("optuna").storages.RDBStorage).parameters
        ),
    ),
    "study.set_metric_names / optuna.artifacts": (
        "optuna",
        "4.4",
        lambda: hasattr(__import__("optuna").Study, "set_metric_names") and hasattr(__import__("optuna"), "artifacts"),
    ),
}


def _floors() -> dict[str, Version]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", d)
        if m:
            out[m.group(1).lower()] = Version(m.group(2))
    return out


def test_floors_are_at_least_the_releases_whose_apis_we_use():
    floors = _floors()
    low = [
        f"{api}: needs {dist}>={first}, pyproject says >={floors.get(dist)}"
        for api, (dist, first, _) in FLOORS.items()
        if floors.get(dist) is None or floors[dist] < Version(first)
    ]
    assert not low, low


def test_the_installed_libraries_have_those_apis():
    missing = [api for api, (_, _, present) in FLOORS.items() if not present()]
    assert not missing, missing


def test_python_3_10_is_supported_as_declared():
    """pyproject says Python >= 3.10: tomllib (3.11+) is read through core._toml, which
    falls back to tomli, declared for older Pythons."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in text and "tomli>=1.1; python_version < '3.11'" in text
    importers = [
        str(p.relative_to(REPO))
        for folder in ("core", "storage", "objectives", "dashboards", "search")
        for p in (REPO / folder).rglob("*.py")
        if re.search(r"^\s*import tomllib|^from tomllib", p.read_text(), re.M)
    ]
    assert importers == ["core/_toml.py"], importers
