"""One trial over several devices (train.gpus_per_trial): DDP through torchrun. On CPU
the ranks use the gloo backend; the CUDA variant runs where a GPU machine is lent."""

import optuna
import pytest
from conftest import FAST, run_cli
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
ARGS = [
    "run",
    *FAST,
    "--set",
    "study.grid={lora_r=[8]}",
    "--set",
    "train.epochs=1",
    "--progress-interval",
    "0",
    "--set",
    "train.gpus_per_trial=2",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.gradient_accumulation=2",
]


def _check(tmp_path, proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    (t,) = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'optuna-search-demo.db'}").get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["gpus_per_trial"] == 2
    # 600 examples / (batch 4 x 2 ranks x accumulation 1): each rank saw half the data,
    # and the effective batch (8) is the configured 4 x 2.
    assert "launching DDP over 2 processes" in proc.stderr
    assert "step 75/75" in proc.stderr
    assert t.user_attrs["gradient_accumulation"] == 1
    assert len(t.user_attrs["train_loss_per_epoch"]) == 1 and sorted(t.intermediate_values) == [1]


def test_one_trial_on_two_ranks_cpu(tmp_path, demo_cache):
    proc = run_cli(*ARGS, cwd=tmp_path, env_extra={"CUDA_VISIBLE_DEVICES": ""})
    _check(tmp_path, proc)


@pytest.mark.gpu
def test_one_trial_on_two_gpus(tmp_path, demo_cache):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    proc = run_cli(*ARGS, cwd=tmp_path)
    _check(tmp_path, proc)


def test_accumulation_must_split_over_the_gpus(tmp_path):
    proc = run_cli(
        "show-config",
        "--preset",
        "demo",
        "--set",
        "train.gpus_per_trial=2",
        "--set",
        "train.gradient_accumulation=3",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "not divisible by train.gpus_per_trial" in proc.stderr


def test_every_objective_path_is_an_objective():
    """One way a trial trains: the runner holds an Objective, in-process or DDP."""
    from optuna_search.objectives import DistributedObjective, Objective, QLoRAObjective, make_objective
    from optuna_search.search.front._config import load_config

    single = make_objective(load_config(preset="demo"))
    ddp = make_objective(load_config(preset="demo", sets=["train.gpus_per_trial=2", "train.gradient_accumulation=2"]))
    assert isinstance(single, QLoRAObjective) and isinstance(ddp, DistributedObjective)
    assert isinstance(single, Objective) and isinstance(ddp, Objective)
    assert "***" in ddp.config.storage.url or "@" not in ddp.config.storage.url  # the ranks never see a password


def test_a_rank_that_runs_out_of_memory_alone_is_heard():
    """Rank 1 out of memory while rank 0 was stopped (torchrun ends the others when one
    fails): the trial is an OutOfMemory of rank 1's phase, so the runner retries it."""
    from optuna_search.objectives._ddp import RankOutcome, _result_of
    from optuna_search.objectives._protocol import OutOfMemory, Stopped

    with pytest.raises(OutOfMemory) as e:
        _result_of(
            [
                RankOutcome(0, "error", message="killed"),
                RankOutcome(1, "oom", message="CUDA out of memory", phase="evaluate"),
            ],
            1,
        )
    assert e.value.phase == "evaluate"
    with pytest.raises(Stopped):
        _result_of(
            [
                RankOutcome(0, "stopped", message="stopped at step 3/75"),
                RankOutcome(1, "stopped", message="stopped at step 3/75"),
            ],
            1,
        )
    with pytest.raises(RuntimeError, match="no result"):
        _result_of([], -9)


def test_successive_halving_with_cool_down_branches_on_two_ranks_cpu(tmp_path, demo_cache):
    """Kaggle's 2x T4 with `study.cooldown`: at a rung both ranks train the cool-down
    branch together (a rank that skipped it would leave the other waiting in its
    all-reduce), the first rank scores it, and the promoted point resumes on both ranks
    from its stable checkpoint, not from the branch."""
    proc = run_cli(
        *ARGS,
        "--set",
        "study.grid={lora_r=[4, 8]}",
        "--set",
        "study.schedule='successive_halving'",
        "--set",
        "study.rungs=[0.34, 1.0]",
        "--set",
        "study.eta=2",
        "--set",
        "study.cooldown=true",
        "--set",
        "train.lr_scheduler='warmup_stable_decay'",
        cwd=tmp_path,
        env_extra={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(
        study_name="demo", storage=f"sqlite:///{tmp_path / 'optuna-search-demo.db'}"
    ).get_trials()
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "PRUNED"], [(t.params, t.state.name, t.user_attrs) for t in trials]
    assert proc.stderr.count("cool-down branch:") == 2 and proc.stderr.count("after the cool-down:") == 2
    (done,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done.user_attrs["gpus_per_trial"] == 2 and "step 75/75" in proc.stderr
    assert done.user_attrs["resumed_from_step"] > 0  # from the rung's stable checkpoint
    # The rung's decision has its paired evidence: the cool-down's per-example scores
    # came back from the first rank.
    assert all(t.user_attrs.get("rung_examples") for t in trials), [t.user_attrs for t in trials]


def test_a_ranks_outcome_comes_back_as_the_types_it_left_as():
    """The last DDP fix ("'dict' object has no attribute 'step'") was a field of the result
    converted by hand and forgotten. An outcome now travels as its dataclasses, every field
    (the cool-down curve's evaluations too) by its type."""
    import json

    from optuna_search.core import SplitScores, from_json, to_json
    from optuna_search.objectives._ddp import RankOutcome
    from optuna_search.objectives._metrics import Evaluation, Prediction
    from optuna_search.objectives._protocol import TrialResult, ValidationPoint

    ev = Evaluation(
        [Prediction("1", {"severity": "low"}, {"severity": None}, "?", None)], SplitScores({"severity": 0.0}, 1), 0.5
    )
    result = TrialResult(
        ev,
        ev,
        [0.9],
        [1.1],
        [ValidationPoint(1, 4, 0.25, 0.5, -1.2)],
        128,
        3.0,
        100.0,
        "rss",
        4,
        max_steps=16,
        cooldown_curve=[ValidationPoint(1, 4, 0.25, 0.6, -1.0, ev, 1)],
    )
    back = from_json(RankOutcome, json.loads(json.dumps(to_json(RankOutcome(0, "ok", result)))))
    assert back == RankOutcome(0, "ok", result)
    assert back.result is not None and back.result.cooldown_curve[0].evaluation.predictions[0].gold == {
        "severity": "low"
    }
