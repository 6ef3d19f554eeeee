import json

from optuna_search.objectives._data import load_dataset_from_config
from optuna_search.objectives._quality import check_quality, quality_warnings
from optuna_search.search.front._config import load_config

LAB = "Severity: low\nComponent: ui\nReproducibility: rare"


def _cfg(tmp_path, train, test):
    for name, rows in (("train", train), ("val", train[:1]), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return load_config(
        preset="demo",
        sets=[
            f'data.{k}="{tmp_path / v}"'
            for k, v in (("train", "train.jsonl"), ("validation", "val.jsonl"), ("test", "test.jsonl"))
        ],
    )


def test_duplicates_conflicts_empty_inputs_and_leakage_are_reported(tmp_path):
    train = [
        {"input": "Crash on start", "output": LAB},
        {"input": "crash  on START", "output": LAB.replace("low", "high") + "\nSeverity: x"},
        {"input": "Crash on start", "output": LAB},
        {"input": "   ", "output": LAB},
        {"input": "Menu typo", "output": LAB.replace("low", "high")},
    ]
    test = [{"input": "menu TYPO", "output": LAB}, {"input": "new report", "output": LAB}]
    ds = load_dataset_from_config(_cfg(tmp_path, train, test).data)
    rep = check_quality(ds)
    assert rep["duplicates"]["train"]["exact"]["rows"] == 1
    assert rep["duplicates"]["train"]["normalised"]["rows"] == 2
    assert rep["duplicates"]["train"]["normalised"]["conflicting"] == 1
    assert rep["empty_inputs"]["train"] == [f"{tmp_path / 'train.jsonl'}:4"]
    assert rep["overlap"]["test"]["rows"] == 1
    assert rep["distribution"]["severity"]["train"] == {"low": 3, "high": 2}
    text = "\n".join(quality_warnings(rep))
    assert "1 rows with an empty report text" in text
    assert "1 of them with conflicting labels" in text
    assert "test: 1 rows also in train (leakage" in text
