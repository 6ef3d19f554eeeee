"""Search beyond the grid on the tiny demo model: samplers, pruning on validation
accuracy, resume of a killed sampled trial, extending a search, Pareto fronts."""

import os
import signal

import optuna
import pytest
from conftest import TPE, run_main, start_cli_until
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
FAST = [
    "--set",
    "train.epochs=1",
    "--set",
    "data.train_samples=400",
    "--set",
    "eval.num_samples=40",
    "--set",
    "eval.validation_samples=40",
]


def _study(work, name):
    """A study by the preset that made it (each demo preset has its own database)."""
    db = "optuna-search-demo-search.db" if name == "demo-search" else "optuna-search-demo.db"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{work / db}")


def test_tpe_study_runs_n_trials_and_extends_with_n_trials(tmp_path, demo_cache):
    args = ["run", *TPE, *FAST, "--set", "study.n_trials=3", "--set", "study.pruner='none'"]
    proc = run_main(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3/3 trials finished" in proc.stdout and "chosen on validation" in proc.stdout
    trials = _study(tmp_path, "demo-search").get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.params["lora_r"] in (2, 4, 8, 12, 16, 24, 32) and 1e-3 <= t.params["learning_rate"] <= 1e-2
        assert t.value == t.user_attrs["validation_overall_accuracy"]  # the objective is on validation
        assert "overall_accuracy" in t.user_attrs  # ...and the test score is stored beside it
    again = run_main(*args, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to run: 3 trials already finished" in again.stdout
    more = run_main(*args, "--n-trials", "4", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert len(_study(tmp_path, "demo-search").get_trials()) == 4
    status = run_main("status", *TPE, cwd=tmp_path)
    assert status.returncode == 0 and "4/4 trials finished" in status.stdout and "best so far:" in status.stdout
    other = run_main(*args, "--set", "study.sampler='random'", cwd=tmp_path)
    assert other.returncode == 2 and "study.sampler: study has 'tpe', config has 'random'" in other.stderr
    # Two searched hyperparameters, four trials: the report says what mattered (Optuna's fANOVA).
    rep = run_main("report", *TPE, "-o", str(tmp_path / "r"), cwd=tmp_path)
    importances = rep.stdout.split("## Parameter importances")[1].split("##")[0]
    assert "fANOVA" in importances and "| lora_r |" in importances and "| learning_rate |" in importances
    assert "Contour Plot" in (tmp_path / "r" / "report.html").read_text()


def test_pruning_on_validation_accuracy_stops_the_worse_trial(tmp_path, demo_cache, monkeypatch):
    """The median pruner stops the second configuration at its first validation point.
    Both train for real; the test controls what the pruner compares (whether one rate
    beats another at a point is the CPU's business): the second configuration's
    validation points report an accuracy below any real one."""
    import dataclasses

    from optuna_search.objectives import QLoRAObjective
    from optuna_search.search.loop import _run

    class SecondCannotLearn:
        def __init__(self, config):
            self.inner = QLoRAObjective(config)

        def __call__(self, request, hooks):
            if request.params.learning_rate < 1e-3:
                worse = hooks.on_validation
                hooks = dataclasses.replace(
                    hooks, on_validation=lambda vp: worse(dataclasses.replace(vp, accuracy=-1.0))
                )
            return self.inner(request, hooks)

    monkeypatch.setattr(_run, "make_objective", SecondCannotLearn)
    proc = run_main(
        "run",
        "--preset",
        "demo",
        "--set",
        "eval.num_samples=40",
        "--set",
        "eval.validation_samples=40",
        "--set",
        "train.epochs=2",
        "--set",
        "study.grid={learning_rate=[1e-2, 1e-7]}",
        "--set",
        "study.pruner='median'",
        "--set",
        "study.pruner_startup_trials=1",
        "--set",
        "study.pruner_warmup_steps=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    good, bad = sorted(_study(tmp_path, "demo").get_trials(), key=lambda t: t.number)
    assert good.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED
    # Intermediate values are validation accuracies: they follow the study's direction.
    assert sorted(good.intermediate_values) == [1, 2]
    curve = {int(n): v for n, v in good.user_attrs["validation_accuracy_curve"]}
    assert (
        good.intermediate_values == curve
        and good.intermediate_values[2] == good.user_attrs["validation_overall_accuracy"]
    )
    assert bad.intermediate_values == {1: -1.0}
    # A pruned trial keeps its curves and its cost, and releases its checkpoints.
    assert (
        bad.user_attrs["pruned_at_step"] == 1 and bad.user_attrs["optimizer_steps"] < good.user_attrs["optimizer_steps"]
    )
    assert bad.user_attrs["train_seconds"] > 0 and len(bad.user_attrs["validation_accuracy_curve"]) == 1
    assert not (tmp_path / "optuna-search-demo-checkpoints" / "demo" / "learning_rate-1e-07").exists()
    assert (tmp_path / "optuna-search-demo-checkpoints" / "demo" / "learning_rate-0.01" / "final-adapter").exists()
    assert "pruned at 1" in proc.stdout


def test_a_killed_sampled_trial_resumes_with_its_own_params(tmp_path, demo_cache):
    args = [
        "run",
        *TPE,
        *FAST,
        "--set",
        "study.n_trials=1",
        "--set",
        "study.pruner='none'",
        "--set",
        "train.checkpoint_steps=10",
        "--set",
        "storage.heartbeat_interval=1",
        "--set",
        "storage.grace_period=3",
    ]
    proc = start_cli_until(*args, pattern=r"step (2\d|3\d)/", cwd=tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = _study(tmp_path, "demo-search").get_trials()
    assert killed.state == TrialState.RUNNING
    again = run_main(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _study(tmp_path, "demo-search").get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].params == killed.params
    assert done[0].user_attrs["resumed_from_step"] >= 10 and len(trials) == 2  # the stale one FAIL, its retry COMPLETE


def test_multi_objective_study_has_a_pareto_front(tmp_path, demo_cache):
    proc = run_main(
        "run",
        "--preset",
        "demo",
        *FAST,
        "--set",
        "study.grid={lora_r=[2, 16]}",
        "--set",
        "train.epochs=2",
        "--set",
        "study.objectives=['overall_accuracy', 'trainable_params']",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(tmp_path, "demo")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["overall_accuracy", "trainable_params"]
    assert len(study.best_trials) == 2 and "Pareto front" in proc.stdout
    rep = run_main("report", "--preset", "demo", "-o", str(tmp_path / "r"), cwd=tmp_path)
    assert (
        rep.returncode == 0 and "## Pareto front" in rep.stdout and "lora_r=2" in rep.stdout.split("## Pareto front")[1]
    )
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Pareto-front Plot" in html  # Optuna's own figure
    refused = run_main(
        "run",
        "--preset",
        "demo",
        "--set",
        "study.objectives=['overall_accuracy', 'trainable_params']",
        "--set",
        "study.pruner='median'",
        "--study-name",
        "x",
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "Optuna does not prune multi-objective studies" in refused.stderr


# -- successive halving over checkpoints, the early signal, warm start ------------------------
HALVING = [
    "--set",
    "study.grid={lora_r=[4, 8, 16]}",
    "--set",
    "study.schedule='successive_halving'",
    "--set",
    "study.rungs=[0.333, 1.0]",
    "--set",
    "study.eta=3",
    "--set",
    "eval.method='score'",
    "--set",
    "study.prune_on='label_logprob'",
]


def test_successive_halving_pauses_at_the_rung_and_resumes_the_best(tmp_path, demo_cache):
    from conftest import FAST as TESTS

    proc = run_main("run", *TESTS, *HALVING, "--set", "study.cooldown=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpointing and pausing" in proc.stderr and "rung 1 (33% of training) decided" in proc.stderr
    # Each trial's line says which rung of how many it trains to (not a fraction to misread).
    assert proc.stderr.count("(rung 1 of 2: to 33% of training) starting") == 3
    assert proc.stderr.count("(rung 2 of 2: to 100% of training) starting") == 1
    assert proc.stderr.count("cool-down branch: 12 steps from step 50") == 3  # once per configuration
    trials = sorted(_study(tmp_path, "demo").get_trials(), key=lambda t: t.number)
    assert len(trials) == 3 and sorted(t.state.name for t in trials) == ["COMPLETE", "PRUNED", "PRUNED"]
    (final,) = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in trials:
        curve = t.user_attrs["validation_curve"]
        assert curve[0]["step"] == 50 and curve[0]["label_logprob"] < 0  # the rung's point: 1/3 of 150 steps
        assert t.intermediate_values[curve[0]["point"]] == curve[0]["label_logprob"]  # prune_on: the log-probability
        # The rung's score: after a cool-down branch of a quarter of its 50 steps (study.cooldown).
        (cooled,) = t.user_attrs["cooldown_curve"]
        assert (cooled["step"], cooled["cooldown_steps"]) == (50, 12)
        assert t.user_attrs["rung_values"]["0"] == cooled["label_logprob"] != curve[0]["label_logprob"]
    best_at_rung = max(trials, key=lambda t: t.user_attrs["rung_values"]["0"])
    assert final.number == best_at_rung.number and final.user_attrs["optimizer_steps"] == 150
    assert all(t.user_attrs["optimizer_steps"] == 50 for t in trials if t.state == TrialState.PRUNED)
    assert final.user_attrs["resumed_from_step"] == 50  # paused at the rung, resumed from its checkpoint
    # Per-example scores at both rungs, the end included: what adaptive promotion judges by.
    examples = final.user_attrs["rung_examples"]
    assert set(examples) == {"0", "1"} and len(examples["0"]) == len(examples["1"]) > 0
    status = run_main("status", "--preset", "demo", cwd=tmp_path)
    assert status.returncode == 0 and "rung" in status.stdout and "2/2 (100%)" in status.stdout
    rep = run_main("report", "--preset", "demo", "-o", str(tmp_path / "r"), cwd=tmp_path)
    assert (
        "Successive halving (rungs 0.333, 1" in rep.stdout
        and "of training every configuration to its end" in rep.stdout
    )
    # Each rung's decision and its evidence: in the log, the study's note and the report.
    import optuna_dashboard

    said = "Rung 1 (33% of training, label_logprob after a 12-step cool-down): went on "
    assert said in proc.stderr and said in optuna_dashboard.get_note(_study(tmp_path, "demo"))
    assert "## Rung 1 (33% of training): what went on and why" in rep.stdout
    assert "| before the cool-down | Went on | p |" in rep.stdout


def _paused_at_a_third():
    """A demo point under warmup_stable_decay with cool-down rungs, and its trial request
    to a fraction of training (validated at 1/3)."""
    from conftest import FAST_CONFIG

    from optuna_search.objectives import TrialRequest
    from optuna_search.objectives._data import prepare_study_data
    from optuna_search.search.front._config import load_config

    config = load_config(
        preset="demo",
        config_file=str(FAST_CONFIG),
        sets=[
            "train.epochs=1",
            "train.lr_scheduler='warmup_stable_decay'",
            "study.cooldown=true",
            "study.schedule='successive_halving'",
        ],
    )
    data = prepare_study_data(
        config.data, config.eval, train_seed=config.train.seed, max_length=config.model.max_length
    )
    params = config.trial_params({"lora_r": 8})

    def request(folder, until):
        return TrialRequest(
            params,
            data.dataset,
            data.test_examples,
            data.validation_examples,
            folder,
            train_until=until,
            validate_at=(0.333,),
        )

    return config, request


def test_a_paused_and_resumed_run_trains_exactly_as_an_uninterrupted_one(tmp_path, demo_model_dir):
    """Pausing at a rung keeps the full run's learning-rate schedule and data order: the
    losses of a run paused at 1/3, scored there after a cool-down branch (discarded) and
    resumed from its checkpoint equal those of one that never paused."""
    import dataclasses

    from optuna_search.objectives import QLoRAObjective, TrialHooks

    config, request = _paused_at_a_third()

    objective = QLoRAObjective(config)
    paused = objective(request(tmp_path / "paused", 0.333), TrialHooks())
    assert paused.paused_at_step == 25 and paused.test is None and paused.cooldown_curve[0].cooldown_steps == 6
    resumed = objective(request(tmp_path / "paused", 1.0), TrialHooks())
    straight = objective(request(tmp_path / "straight", 1.0), TrialHooks())
    assert resumed.resumed_from_step == 25 and resumed.optimizer_steps == straight.optimizer_steps == 75
    # ...and training does not depend on how often it is validated (a validation pass
    # leaves the random state as it found it): the curves a benchmark replays are the
    # trainings successive halving runs.
    often = objective(
        dataclasses.replace(request(tmp_path / "often", 1.0), validate_at=tuple(k / 15 for k in range(1, 16))),
        TrialHooks(),
    )
    assert len(often.validation_curve) == 15

    def losses(folder):
        import json

        state = json.loads(next(folder.glob("checkpoint-75")).joinpath("trainer_state.json").read_text())
        return [r["loss"] for r in state["log_history"] if "loss" in r]

    assert losses(tmp_path / "paused") == pytest.approx(losses(tmp_path / "straight"), rel=1e-5, abs=1e-6)
    assert losses(tmp_path / "often") == pytest.approx(losses(tmp_path / "straight"), rel=1e-5, abs=1e-6)
    assert [p.accuracy for p in resumed.validation_curve] == pytest.approx(
        [p.accuracy for p in straight.validation_curve]
    )
    import json

    state = json.loads((tmp_path / "straight" / "checkpoint-75" / "trainer_state.json").read_text())
    rates = [r["learning_rate"] for r in state["log_history"] if "learning_rate" in r]
    assert rates[30] == rates[59] == max(rates) and rates[-1] < 0.2 * max(rates)  # warm-up, stable, the decay


def test_a_rung_under_warmup_stable_decay_is_scored_after_a_cool_down_branch_that_is_then_discarded(
    tmp_path, demo_model_dir
):
    """A warmup-stable-decay run paused at a rung is scored after a cool-down branch from
    its stable checkpoint; the branch leaves nothing behind but the score (that a promoted
    run then trains exactly as one that never paused: the test above). A run stopped
    during its branch trains the branch alone again; one whose rung was scored trains
    nothing."""
    import json

    from optuna_search.objectives import QLoRAObjective, Stopped, TrialHooks

    config, request = _paused_at_a_third()

    def call(folder, until, stop_in_branch=False):
        lines: list[str] = []
        hooks = TrialHooks(
            progress=lines.append,
            stop_requested=lambda: stop_in_branch and any("cool-down branch" in x for x in lines),
            progress_interval=0,
        )
        return objective(request(folder, until), hooks), lines

    def history(folder, step):
        return json.loads((folder / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]

    objective = QLoRAObjective(config)
    paused_dir = tmp_path / "paused"
    paused, lines = call(paused_dir, 0.333)
    assert paused.paused_at_step == 25 and paused.test is None
    (cooled,) = paused.cooldown_curve
    # 25 stable steps, then a quarter of them (decay_ratio 0.2 of a 25 + 6 step budget).
    assert (cooled.step, cooled.cooldown_steps) == (25, 6) and cooled.evaluation is not None
    assert any("cool-down branch: 6 steps from step 25" in x for x in lines)
    assert not (paused_dir / "cooldown").exists()  # the branch left nothing behind
    assert max(p.name for p in paused_dir.iterdir()) == "checkpoint-25"
    stable = history(paused_dir, 25)
    assert max(r["step"] for r in stable if "loss" in r) == 25  # the branch's steps are not in the checkpoint
    assert [r["cooldown_steps"] for r in stable if "cooldown_steps" in r] == [6]

    again, lines = call(paused_dir, 0.333)  # killed after the rung was scored: nothing to train
    assert not lines or not any("cool-down" in x or "loaded base model" in x for x in lines)
    assert again.cooldown_curve[0].accuracy == cooled.accuracy and again.paused_at_step == 25

    stopped_dir = tmp_path / "stopped"
    with pytest.raises(Stopped):
        call(stopped_dir, 0.333, stop_in_branch=True)
    assert not any("cooldown_steps" in r for r in history(stopped_dir, 25))  # the stable checkpoint, unscored
    branch_only, lines = call(stopped_dir, 0.333)
    assert any("cool-down branch" in x for x in lines) and not any("pausing" in x for x in lines)
    assert branch_only.cooldown_curve[0].step == 25 and branch_only.paused_at_step == 25


def test_the_cool_down_branch_follows_the_run_then_falls_to_zero():
    import torch
    from transformers import TrainingArguments

    from optuna_search.objectives._trainer import Branch, cool_down, run_schedule

    def rates(scheduler="warmup_stable_decay", branch=None):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        args = TrainingArguments("unused", lr_scheduler_type=scheduler, warmup_steps=0.1, use_cpu=True)
        schedule = run_schedule(opt, args, 100, 0.2)
        schedule = cool_down(opt, schedule, branch) if branch else schedule
        return [schedule.lr_lambdas[0](t) for t in range(101)]

    run = rates()
    assert run[5] == pytest.approx(0.5) and run[10] == run[79] == 1.0 and run[90] < 1.0 and run[100] == 0.0
    branch = rates(branch=Branch(start=40, length=10, main_steps=100))
    assert branch[:41] == run[:41] and branch[50] == 0.0 and 0 < branch[45] < 1.0
    assert branch[41] > branch[45] > branch[49]
    late = rates(branch=Branch(start=90, length=5, main_steps=100))  # a rung in the decay: from where it is
    assert late[:91] == run[:91] and late[91] < run[90] and late[95] == 0.0
    cosine = rates("cosine")
    from_cosine = rates("cosine", Branch(start=40, length=10, main_steps=100))  # any schedule's rung cools down
    assert from_cosine[:41] == cosine[:41] and from_cosine[50] == 0.0 and cosine[50] > 0.5


def test_warm_start_copies_the_grid_into_a_search_and_refuses_other_examples(tmp_path, demo_cache):
    from conftest import FAST as TESTS

    grid = run_main("run", *TESTS, "--set", "study.grid={lora_r=[4]}", cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr[-2000:]
    url = f"sqlite:///{tmp_path / 'optuna-search-demo.db'}#demo"
    search = [
        "run",
        *TESTS,
        "--study-name",
        "wider",
        "--set",
        "study.sampler='tpe'",
        "--set",
        "study.grid={}",
        "--set",
        "study.search_space={lora_r=[4, 8]}",
        "--set",
        "study.n_trials=2",
        "--warm-start-from",
        url,
    ]
    proc = run_main(*search, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warm start: 1 finished trials of study 'demo' copied" in proc.stderr
    wider = _study(tmp_path, "wider").get_trials()
    assert sorted(t.params["lora_r"] for t in wider) == [4, 8] and len(wider) == 2  # r=4 not trained again
    copied = next(t for t in wider if t.params["lora_r"] == 4)
    assert copied.user_attrs["warm_start_from"] == "demo#0" and copied.value == copied.user_attrs["overall_accuracy"]
    other = run_main(*search, "--study-name", "other", "--set", "eval.num_samples=40", cwd=tmp_path)
    assert other.returncode == 2 and "warm start from study 'demo' refused: its test examples differ" in other.stderr
    # Trained on another subset of the same file (seen: "2 finished trials copied").
    for change, needle in (
        ("data.train_samples=300", "its data.train_samples is 600, this study's 300"),
        ("train.seed=7", "its train.seed is 42, this study's 7"),
    ):
        refused = run_main(*search, "--study-name", "other", "--set", change, cwd=tmp_path)
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr[-1000:]
    assert "other" not in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna-search-demo.db'}")
    missing = run_main(
        *search, "--study-name", "x", "--warm-start-from", f"sqlite:///{tmp_path / 'no.db'}#demo", cwd=tmp_path
    )
    assert (
        missing.returncode == 2
        and "the earlier study's database" in missing.stderr
        and "--warm-start-from" in missing.stderr
    )
    # A warm start whose trials all fall outside the new space copies nothing, and says so.
    empty = run_main(
        *search,
        "--study-name",
        "empty",
        "--set",
        "study.search_space={lora_r=[8, 16]}",
        "--set",
        "study.n_trials=1",
        cwd=tmp_path,
    )
    assert empty.returncode == 0 and "warm start: no trial of study 'demo' fits this study" in empty.stderr


def test_a_macro_f1_study_tracked_in_tensorboard(tmp_path, demo_cache):
    """study.objectives = ["macro_f1"] runs end to end (the value is the mean macro-F1 of
    the fields), and train.report_to = ["tensorboard"] writes one run per trial that
    TensorBoard reads back: the training curve and the final scores."""
    from conftest import FAST as TESTS
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_main(
        "run",
        *TESTS,
        "--set",
        "study.grid={lora_r=[8]}",
        "--set",
        "train.epochs=1",
        "--set",
        "study.objectives=['macro_f1']",
        "--set",
        "train.report_to=['tensorboard']",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (t,) = _study(tmp_path, "demo").get_trials()
    assert t.value == pytest.approx(t.user_attrs["macro_f1"]) and _study(tmp_path, "demo").metric_names == ["macro_f1"]
    assert "chosen on test: macro_f1" in proc.stdout
    logdir = tmp_path / t.user_attrs["tracking"]["tensorboard"]  # relative to where the study runs, as its checkpoints
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "test/overall_accuracy" in tags and "test/macro_f1" in tags
    assert events.Scalars("test/macro_f1")[-1].value == pytest.approx(t.value, abs=1e-6)
    assert len(events.Scalars("train/loss")) == t.user_attrs["optimizer_steps"]
