"""The Python API as the documentation shows it (docs/using-the-winner.md): its example runs as written."""

import re

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def readme_example() -> str:
    text = (REPO / "docs" / "using-the-winner.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_example_runs_where_the_quickstart_ran(demo_study, tmp_path, monkeypatch, capsys):
    """Seen: run after the Quickstart, in its folder, the example met the demo study and
    ended in a traceback telling a Python user to pass --study-name. It runs there, and
    leaves the Quickstart's study as it was."""
    import shutil

    import optuna

    work = tmp_path / "quickstart"
    shutil.copytree(demo_study[0], work)
    demo = optuna.load_study(study_name="demo", storage=f"sqlite:///{work / 'optuna-search-demo.db'}")
    before = [(t.number, t.state, t.values, t.datetime_complete) for t in demo.get_trials()]
    monkeypatch.chdir(work)
    exec(compile(readme_example(), "docs/using-the-winner.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert [(t.number, t.state, t.values, t.datetime_complete) for t in demo.get_trials()] == before
    assert "1/1 grid points complete" in out
    assert re.search(r"lora_r=8 \d+\.\d+ \d+\.\d+", out)  # the best, its overall accuracy and the majority baseline's
    assert re.search(r"^1 \{'severity': '\w+', 'component': '\w+', 'reproducibility': '\w+'\}$", out, re.M)


def test_public_names_have_docstrings():
    import optuna_search

    for name in optuna_search.__all__:
        obj = getattr(optuna_search, name)
        assert obj.__doc__ and obj.__doc__.strip(), name


CONFIG = """[study]
name = "same-door"
grid = { lora_r = [4, 8] }

[train]
epochs = 1
"""


def test_the_cli_and_the_api_are_one_front_door_stdin_included(tmp_path, demo_cache, monkeypatch):
    """The same input (a preset and a config on standard input) through `run` and through
    the API stores the same config; the file on standard input is read once, so the keys
    it sets count as the user's (seen: read twice, the second time empty). A budget of a
    millisecond creates the study and trains nothing."""
    import io
    import subprocess
    import sys

    import optuna

    import optuna_search
    from optuna_search.search.front._request import RunRequest

    cli, api = tmp_path / "cli", tmp_path / "api"
    cli.mkdir(), api.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_search.search",
            "run",
            "--preset",
            "demo",
            "--config",
            "-",
            "--time-budget",
            "0.001s",
        ],
        input=CONFIG,
        cwd=cli,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    monkeypatch.chdir(api)
    monkeypatch.setattr(sys, "stdin", io.StringIO(CONFIG))
    request = RunRequest.from_layers("demo", "-", time_budget_s=0.001)
    assert {"study.name", "study.grid", "train.epochs"} <= request.explicit
    assert optuna_search.run(request).exit_code == 3
    stored = [
        optuna.load_study(study_name="same-door", storage=f"sqlite:///{d / 'optuna-search-demo.db'}").user_attrs
        for d in (cli, api)
    ]
    assert stored[0]["config"] == stored[1]["config"] and stored[0]["config_toml"] == stored[1]["config_toml"]
    assert stored[0]["config"]["study"]["grid"] == {"lora_r": [4, 8]} and stored[0]["config"]["train"]["epochs"] == 1


def test_the_api_does_what_the_cli_does(scored_study, tmp_path, monkeypatch):
    """Seen missing: export/import of studies, ensemble, validate; a one-string `sets`."""
    import shutil

    import optuna_search

    work = tmp_path / "s"
    shutil.copytree(scored_study, work)
    monkeypatch.chdir(work)
    url = f"sqlite:///{work / 'optuna-search-demo.db'}"
    config = optuna_search.load_config(preset="demo", sets="eval.num_samples=50")
    assert config.eval.num_samples == 50
    assert "baselines on the test subset" in optuna_search.validate(config)
    assert "soft" in optuna_search.ensemble(url)
    exported = optuna_search.export_study(url, tmp_path / "bundle")
    assert "study" in exported["units"] and exported["files"] > 3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    handle = optuna_search.open_study(remote=str(tmp_path / "bundle"))  # read from the folder, no copy step
    assert handle.best is not None and handle.best.number == optuna_search.open_study(url).best.number


def test_run_options_have_one_name_from_the_command_line_and_the_api(tmp_path):
    """`run`'s flags and the API's keywords are RunRequest's fields, by the same names and
    defaults (seen: `time_budget` in the API, `time_budget_s` in the request, and workers
    defaulting to 1 in one and to one per GPU in the other)."""
    import optuna_search
    from optuna_search.search.front import RunRequest, build_parser
    from optuna_search.search.front._request import RUN_OPTIONS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    run_args = sub.choices["run"].parse_args([])
    for name in RUN_OPTIONS:
        assert getattr(run_args, name) == RunRequest.__dataclass_fields__[name].default, name
    config = optuna_search.load_config(preset="demo")
    with pytest.raises(optuna_search.UserError, match="unknown run option.*time_budget.*known: .*time_budget_s") as e:
        optuna_search.run(config, time_budget=60)
    assert "worker," not in str(e.value) and not str(e.value).endswith("worker")  # run --workers' own
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"time_budget_s": float("nan")}, "time_budget_s = nan must be a positive number"),
        ({"time_budget_s": -5}, "time_budget_s = -5 must be a positive number"),
        ({"time_budget_s": "soon"}, "'soon' is not a duration"),
        ({"time_budget_s": True}, "time_budget_s = True"),
        ({"workers": 0}, "workers = 0 must be a positive integer"),
        ({"retry_failed": "yes"}, "retry_failed = 'yes' must be True or False"),
    ],
)
def test_the_apis_run_options_are_checked_as_the_command_line_checks_them(options, needle, tmp_path, monkeypatch):
    """Seen: the API took time_budget_s=nan (no budget), -5 (ran, exit 3) and "1h" (a raw
    TypeError). A duration as text is taken as --time-budget takes it; the rest is one line."""
    import optuna_search
    from optuna_search.search.front import RunRequest

    config = optuna_search.load_config(preset="demo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(optuna_search.UserError, match=re.escape(needle)):
        optuna_search.run(config, **options)
    assert not list(tmp_path.iterdir())
    assert RunRequest.of(config, time_budget_s="1h30m").time_budget_s == 5400
