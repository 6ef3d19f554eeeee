"""The Python API as the README shows it: the README's example runs as written."""

import re

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_example_runs(tmp_path, demo_cache, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert "1/1 grid points complete" in out
    assert re.search(r"lora_r=8 \d+\.\d+ \d+\.\d+", out)  # the best, its overall accuracy and the majority baseline's
    assert re.search(r"^1 \{'severity': '\w+', 'component': '\w+', 'reproducibility': '\w+'\}$", out, re.M)


def test_public_names_have_docstrings():
    import optuna_search

    for name in optuna_search.__all__:
        obj = getattr(optuna_search, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
