import pytest
from conftest import TPE_SETS

from optuna_search.core import Config, UserError
from optuna_search.core._identity import adopt_legacy_defaults, diff_semantic
from optuna_search.core._toml import loads, to_toml
from optuna_search.search.front._config import list_presets, load_config, parse_set_option, read_preset


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_preset_loads_and_round_trips(name):
    config = load_config(preset=name)
    assert isinstance(config, Config)
    # show-config's TOML reads back to the same configuration.
    again = load_config(config_file=None, sets=None, overrides=loads(to_toml(config)))
    assert again == config


def test_presets_shipped():
    assert {"kaggle-t4", "demo"} <= set(list_presets())


def test_kaggle_preset_is_the_flagship_study():
    c = load_config(preset="kaggle-t4")
    assert c.model.name_or_path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (c.model.quantization, c.model.double_quant, c.model.compute_dtype) == ("nf4", True, "float16")
    assert c.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert c.lora.dropout == 0.1 and c.lora.alpha_ratio == 4.0
    assert c.study.grid == {"lora_r": [4, 8, 16]}
    assert [c.trial_params(p).lora_alpha for p in c.grid_points()] == [16, 32, 64]
    t = c.train
    assert (t.learning_rate, t.batch_size, t.gradient_accumulation, t.epochs) == (2e-4, 4, 4, 3)
    assert (t.lr_scheduler, t.warmup_ratio, t.seed) == ("cosine", 0.1, 42)
    assert (c.eval.num_samples, c.model.max_length) == (100, 512)


def test_follow_up_grid_enumerates_every_combination():
    c = load_config(
        preset="demo",
        sets=["study.grid={lora_r=[2,4,8,12,16,24,32], learning_rate=[1e-4,2e-4,3e-4,4e-4]}"],
    )
    points = c.grid_points()
    assert len(points) == 28
    assert len({tuple(sorted(p.items())) for p in points}) == 28


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(UserError) as e:
        load_config(preset="demo", sets=["train.learnig_rate=1e-4"])
    assert "unknown key train.learnig_rate" in str(e.value)
    assert "did you mean train.learning_rate" in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UserError) as e:
        load_config(
            preset="demo",
            sets=["lora.r=0", "train.learning_rate=-1", "model.quantization=int3", "study.grid={lora_r=[0, 8]}"],
        )
    msg = str(e.value)
    for part in ("lora.r = 0", "train.learning_rate = -1", "model.quantization = 'int3'", "study.grid.lora_r value 0"):
        assert part in msg


def test_wrong_type_is_named():
    with pytest.raises(UserError, match="train.epochs = 'three' must be an integer"):
        load_config(preset="demo", sets=["train.epochs=three"])


def test_precedence_flags_over_set_over_file_over_preset(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 5\nseed = 7\n[storage]\nurl = "sqlite:///file.db"\n')
    c = load_config(
        preset="demo", config_file=str(f), sets=["train.epochs=2"], overrides={"storage": {"url": "sqlite:///flag.db"}}
    )
    assert c.train.epochs == 2  # --set beats the file
    assert c.train.seed == 7  # the file beats the preset
    assert c.storage.url == "sqlite:///flag.db"  # explicit flags beat everything
    assert c.train.learning_rate == read_preset("demo")["train"]["learning_rate"]


def test_set_values_are_read_as_toml():
    assert parse_set_option("train.learning_rate=2e-4") == ("train", "learning_rate", 2e-4)
    assert parse_set_option("lora.target_modules=q_proj,v_proj")[2] == "q_proj,v_proj"
    with pytest.raises(UserError, match="section.key=value"):
        parse_set_option("epochs=3")


def test_semantic_diff_ignores_storage_and_names_meaningful_changes():
    a = load_config(preset="demo").to_dict()
    b = load_config(preset="demo", sets=["storage.url=sqlite:///elsewhere.db", "eval.batch_size=3"]).to_dict()
    assert diff_semantic(a, b) == []
    c = load_config(preset="demo", sets=["train.learning_rate=1e-3", "eval.num_samples=50"]).to_dict()
    diffs = diff_semantic(a, c)
    assert any(d.startswith("train.learning_rate") for d in diffs)
    assert any(d.startswith("eval.num_samples") for d in diffs)


def test_toml_output_reads_back_whatever_characters_it_holds():
    # An emoji is outside the BMP: a hand-written TOML writer escaped it as two invalid surrogates.
    c = load_config(
        preset="demo", sets=['data.default_instruction="Classify this \U0001f41b report: "quoted" \\ done"']
    )
    assert "\U0001f41b" in c.data.default_instruction
    assert load_config(overrides=loads(to_toml(c))) == c


@pytest.mark.parametrize(
    "setting,needle",
    [
        ("train.learning_rate=inf", "train.learning_rate = inf must be a finite number"),
        ("train.learning_rate=nan", "train.learning_rate = nan must be a finite number"),
        ("study.grid={learning_rate=[nan]}", "numbers must be finite"),
        ("lora.dropout=-inf", "lora.dropout = -inf must be a finite number"),
    ],
)
def test_non_finite_numbers_are_refused_everywhere(setting, needle):
    with pytest.raises(UserError, match="invalid configuration") as e:
        load_config(preset="demo", sets=[setting])
    assert needle in str(e.value)


def test_a_nan_range_bound_is_refused():
    with pytest.raises(UserError) as e:
        load_config(preset="demo-search", sets=[*TPE_SETS, "study.search_space={learning_rate={low=nan, high=1e-3}}"])
    assert "numbers must be finite" in str(e.value)


@pytest.mark.parametrize(
    "space,needle",
    [
        ("{lora_r={low=2, high=16, step=2.5}}", "step = 2.5 must be a positive integer"),
        ("{lora_r={low=2, high=16, step=32}}", "is larger than the range"),
        ("{learning_rate={low=1e-4, high=4e-4, step=2e-4}}", "does not divide"),
        ("{lora_r=[4, 8, 4]}", "repeats a value"),
        ("{lora_r={low=1, high=2000000000}}", "must be an integer from 1 to 1,024"),
        ("{lora_dropout={low=0.0, high=0.2, log=true}}", "a log range"),
        ("{target_modules={low=1, high=2}}", "must be a list of choices"),
    ],
)
def test_search_spaces_optuna_would_silently_adjust_are_refused(space, needle):
    with pytest.raises(UserError) as e:
        load_config(preset="demo-search", sets=[*TPE_SETS, f"study.search_space={space}"])
    assert needle in str(e.value)


def test_absurd_counts_are_refused():
    with pytest.raises(UserError, match="n_trials = 100000000000000000000"):
        load_config(preset="demo-search", sets=[*TPE_SETS, "study.n_trials=100000000000000000000"])
    with pytest.raises(UserError, match="must be an integer from 1 to 1,024"):
        load_config(preset="demo", sets=["study.grid={lora_r=[2000000000]}"])


def test_label_sets_must_be_lists():
    with pytest.raises(UserError, match="data.labels.severity = 'low,high' must be a list of labels"):
        load_config(preset="demo", sets=['data.labels={severity="low,high"}'])


def test_lora_alpha_is_a_hyperparameter_of_its_own():
    """The table's example: lora_alpha searched independently of r (one table entry)."""
    c = load_config(preset="demo", sets=["study.grid={lora_r=[8], lora_alpha=[8, 32]}"])
    assert [c.trial_params(p).lora_alpha for p in c.grid_points()] == [8.0, 32.0]
    assert [c.trial_params(p).lora_r for p in c.grid_points()] == [8, 8]
    fixed = load_config(preset="demo", sets=["lora.alpha=12"])
    assert fixed.trial_params({"lora_r": 4}).lora_alpha == 12.0
    assert load_config(preset="demo").trial_params({"lora_r": 4}).lora_alpha == 16.0  # alpha_ratio * r by default


def test_hyperparameters_reach_peft_and_trainer_by_the_table():
    from optuna_search.core._params import HYPERPARAMETERS, to_optuna_value

    c = load_config(
        preset="demo",
        sets=[
            "lora.use_dora=true",
            "lora.use_rslora=true",
            'lora.target_modules="all-linear"',
            "train.max_grad_norm=0.3",
            "train.lr_scheduler='linear'",
            "train.optim='adafactor'",
            "train.batch_size=2",
            "train.gradient_accumulation=8",
        ],
    )
    p = c.trial_params({"lora_r": 16, "learning_rate": 3e-4})
    lora, trainer = p.lora_kwargs(), p.trainer_kwargs()
    assert lora == {
        "r": 16,
        "lora_alpha": 64.0,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "use_dora": True,
        "use_rslora": True,
    }
    assert (
        trainer["learning_rate"] == 3e-4
        and trainer["max_grad_norm"] == 0.3
        and trainer["lr_scheduler_type"] == "linear"
    )
    assert trainer["optim"] == "adafactor" and trainer["gradient_accumulation_steps"] == 8
    assert trainer["per_device_train_batch_size"] == trainer["per_device_eval_batch_size"] == 2
    # Every entry maps onto peft or Trainer, and every one may be searched.
    assert all(h.peft or h.trainer for h in HYPERPARAMETERS)
    for h in HYPERPARAMETERS:
        value = getattr(p, h.name)
        searched = load_config(preset="demo", sets=[f"study.grid={{{h.name}=[{_toml(value)}]}}"])
        (point,) = searched.grid_points()
        assert getattr(searched.trial_params({h.name: to_optuna_value(h.name, point[h.name])}), h.name) == value, h.name


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return '"' + ",".join(v) + '"'
    return repr(v)


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["study.schedule='successive_halving'", "study.rungs=[0.5, 0.3, 1.0]"], "must be increasing fractions"),
        (["study.schedule='successive_halving'", "study.rungs=[0.3, 0.6]"], "ending at 1.0"),
        (["study.schedule='successive_halving'", "study.eta=1"], "study.eta = 1 must be from 2 to 100"),
        (["study.prune_on='label_logprob'"], "needs label probabilities"),
        (
            ["study.schedule='successive_halving'", "study.objectives=['overall_accuracy', 'trainable_params']"],
            "compares configurations on one objective",
        ),
        (["study.objectives=['accuracy_macro']"], "is not one of"),
        (["train.report_to=['neptune']"], "'neptune' is not one of tensorboard, mlflow, wandb"),
        (["train.optim='lion'"], "must be one of adamw_torch"),
    ],
)
def test_bad_search_and_schedule_settings_are_one_line_each(sets, needle):
    with pytest.raises(UserError) as e:
        load_config(preset="demo", sets=sets)
    assert needle in str(e.value)


def test_quality_objectives_beyond_accuracy():
    c = load_config(preset="demo", sets=["study.objectives=['macro_f1', 'component_macro_f1']"])
    assert c.directions() == ["maximize", "maximize"]
    load_config(preset="demo", sets=["study.objectives=['balanced_accuracy']"])


def test_a_study_stored_before_new_keys_keeps_its_meaning():
    stored = load_config(preset="demo").to_dict()
    del stored["eval"]["stratify"]  # written by a version without stratified subsets
    config = load_config(preset="demo")
    adjusted, adopted = adopt_legacy_defaults(stored, config)
    assert adjusted.eval.stratify is False and adopted == ["eval.stratify = False"]
    assert diff_semantic(stored, adjusted.to_dict()) == []
    explicit = load_config(preset="demo", sets=["lora.use_dora=true"])
    del stored["lora"]["use_dora"]
    assert "lora.use_dora: study has False, config has True" in diff_semantic(stored, explicit.to_dict())


def test_an_old_kaggle_study_resumes_with_the_new_preset():
    """The kaggle presets now train with paged 8-bit AdamW; a study created by an earlier
    version (no train.optim stored: AdamW) resumes with the same preset unchanged, and
    only an explicit other optimizer is a different study."""
    stored = load_config(preset="kaggle-t4").to_dict()
    del stored["train"]["optim"]
    preset = load_config(preset="kaggle-t4")
    assert preset.train.optim == "paged_adamw_8bit"
    adjusted, _adopted = adopt_legacy_defaults(stored, preset, explicit=set())
    assert adjusted.train.optim == "adamw_torch" and diff_semantic(stored, adjusted.to_dict()) == []
    mine, _ = adopt_legacy_defaults(stored, preset, explicit={"train.optim"})
    assert diff_semantic(stored, mine.to_dict()) == [
        "train.optim: study has 'adamw_torch', config has 'paged_adamw_8bit'"
    ]


def test_a_hyperparameter_is_one_entry_of_the_table():
    """TrialParams' fields, the config checks of fixed values, the stored configs of earlier
    versions and the trial's note all come from the table: no list kept beside it (a
    duplicated type stub, hand-listed checks, a legacy-values list and the note's rows were)."""
    import dataclasses

    from optuna_search.core import HYPERPARAMETERS, SINCE_THE_FIRST_VERSION, TrialParams
    from optuna_search.core._identity import LEGACY_VALUES
    from optuna_search.core._record import TrialRecord
    from optuna_search.dashboards._notes import _config_rows

    assert [h.name for h in HYPERPARAMETERS] == [f.name for f in dataclasses.fields(TrialParams)]
    later = {h.config: h.legacy for h in HYPERPARAMETERS if h.legacy is not SINCE_THE_FIRST_VERSION}
    assert later and all(LEGACY_VALUES[k] == v for k, v in later.items())
    config = load_config(preset="demo")
    rows = {row[0] for row in _config_rows(TrialRecord(effective_params=config.trial_params({}).to_dict()), config)}
    assert {h.name for h in HYPERPARAMETERS} <= rows
    problems = {}
    for h in HYPERPARAMETERS:  # every fixed value is checked by the table's own check
        section, key = h.config.split(".")
        bad = {"lora.alpha": -1.0, "lora.target_modules": []}.get(h.config, "not a value")
        try:
            load_config(preset="demo", sets=[f"{section}.{key}={bad!r}"])
        except UserError as e:
            problems[h.name] = str(e)
    assert set(problems) == {h.name for h in HYPERPARAMETERS}, sorted({h.name for h in HYPERPARAMETERS} - set(problems))


def test_successive_halving_with_one_rung_is_refused():
    from optuna_search.core import UserError
    from optuna_search.search.front._config import load_config

    with pytest.raises(UserError, match=r"study.rungs = \[1.0\] gives successive halving one rung"):
        load_config(preset="demo-search", sets="study.rungs=[1.0]")
    # ...and a cool-down for rungs a study does not have.
    with pytest.raises(UserError, match=r"study.cooldown = true scores successive halving's rungs"):
        load_config(preset="demo", sets="study.cooldown=true")
    with pytest.raises(UserError, match=r"train.decay_ratio = 1.0 must be in \(0, 1\)"):
        load_config(preset="demo-search", sets="train.decay_ratio=1.0")


def test_a_config_files_relative_data_paths_are_relative_to_it(tmp_path):
    """Seen: resolved against the current folder, and the message did not say which path."""
    from optuna_search.search.front._config import load_config

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "study.toml").write_text(
        '[data]\ntrain = "data/train.jsonl"\nvalidation = "builtin:demo-bugs/val.jsonl"\n'
    )
    config = load_config(preset="demo", config_file=str(folder / "study.toml"), sets=["data.test='rel/test.jsonl'"])
    assert config.data.train == str(folder / "data" / "train.jsonl")  # the file's folder
    assert (
        config.data.validation == "builtin:demo-bugs/val.jsonl" and config.data.test == "rel/test.jsonl"
    )  # --set: as given


def test_a_warm_up_and_a_decay_longer_than_training_are_refused():
    """Seen: warmup_ratio 0.5 with decay_ratio 0.9 on warmup_stable_decay was taken, and the
    rate jumped from 0.9 to 0.33 of its peak where the warm-up ended."""
    with pytest.raises(UserError, match=r"warmup_ratio = 0.5 and train.decay_ratio = 0.9 add up to more"):
        load_config(
            preset="demo",
            sets=["train.lr_scheduler='warmup_stable_decay'", "train.warmup_ratio=0.5", "train.decay_ratio=0.9"],
        )
    ok = load_config(
        preset="demo",
        sets=["train.lr_scheduler='warmup_stable_decay'", "train.warmup_ratio=0.3", "train.decay_ratio=0.7"],
    )
    assert ok.train.warmup_ratio + ok.train.decay_ratio == 1.0


def test_a_commit_budget_above_the_hubs_limit_is_refused_on_a_dataset_repo():
    """Seen: remote_commits_per_hour = 200 on hf://datasets/... accepted without a word
    (huggingface.co refuses a repo's commits past 128 an hour)."""
    sets = ["storage.remote='hf://datasets/u/study'", "storage.remote_commits_per_hour=200"]
    with pytest.raises(
        UserError, match="is more than huggingface.co takes: it refuses a dataset repo's commits past 128"
    ):
        load_config(preset="demo", sets=sets)
    load_config(preset="demo", sets=[*sets[:1], "storage.remote_commits_per_hour=128"])
    load_config(preset="demo", sets=["storage.remote='hf://buckets/u/study'", sets[1]])  # a bucket has no commits


@pytest.mark.parametrize("name", ["overall", "balanced", "exact_match"])
def test_a_field_named_like_an_aggregate_is_refused(name):
    """Seen: a data set with a field named `overall` was accepted, and that field's accuracy
    read back as the mean of all fields (the baselines key both by name)."""
    with pytest.raises(UserError, match=rf"data.fields names {name!r}, which collides"):
        load_config(preset="demo", sets=[f"data.fields=['severity', '{name}']"])
    load_config(preset="demo", sets=["data.fields=['severity', 'macro']"])  # no collision: taken
