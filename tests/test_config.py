import tomllib

import pytest

from optuna_search.core import Config
from optuna_search.core._config import diff_semantic, to_toml
from optuna_search.search._config import list_presets, load_config, parse_set_option, read_preset
from optuna_search.core import UserError


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_preset_loads_and_round_trips(name):
    config = load_config(preset=name)
    assert isinstance(config, Config)
    # show-config's TOML reads back to the same configuration.
    again = load_config(config_file=None, sets=None, overrides=tomllib.loads(to_toml(config)))
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
        load_config(preset="demo", sets=["lora.r=0", "train.learning_rate=-1", "model.quantization=int3", "study.grid={lora_r=[0, 8]}"])
    msg = str(e.value)
    for part in ("lora.r = 0", "train.learning_rate = -1", "model.quantization = 'int3'", "study.grid.lora_r value 0"):
        assert part in msg


def test_wrong_type_is_named():
    with pytest.raises(UserError, match="train.epochs = 'three' must be an integer"):
        load_config(preset="demo", sets=["train.epochs=three"])


def test_precedence_flags_over_set_over_file_over_preset(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 5\nseed = 7\n[storage]\nurl = "sqlite:///file.db"\n')
    c = load_config(preset="demo", config_file=str(f), sets=["train.epochs=2"], overrides={"storage": {"url": "sqlite:///flag.db"}})
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
