"""Label scoring (eval.method = "score"): probabilities over each field's closed label
set, reusing the prompt's key/value cache; checked against generation and against a
brute-force computation without any cache."""

import math

import pytest
import torch

from optuna_search.objectives._data import Example
from optuna_search.objectives._evaluate import evaluate
from optuna_search.objectives._model import load_tokenizer
from optuna_search.objectives._prompt import PromptEncoder
from optuna_search.objectives._score import candidate_ids, score_labels
from optuna_search.objectives._stats import calibration_metrics, expected_calibration_error
from optuna_search.search.front._config import load_config

FIELDS = ["severity", "component", "reproducibility"]


@pytest.fixture(scope="module")
def trained(demo_study):
    """The demo study's trained r=8 adapter on its 4-bit base, and its evaluation data."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from optuna_search.objectives._data import prepare_study_data
    from optuna_search.objectives._model import keep_4bit_layers_trainable_on_cpu, model_source

    work, proc = demo_study
    assert proc.returncode == 0
    cfg = load_config(preset="demo")
    sd = prepare_study_data(cfg.data, cfg.eval, train_seed=cfg.train.seed, max_length=cfg.model.max_length)
    src = model_source(cfg.model)
    tok = load_tokenizer(src, cfg.model)
    base = AutoModelForCausalLM.from_pretrained(
        src,
        dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
    )
    keep_4bit_layers_trainable_on_cpu(base)
    model = PeftModel.from_pretrained(
        base, str(work / "optuna-search-demo-checkpoints" / "demo" / "lora_r-8" / "final-adapter")
    )
    model.eval()
    return model, tok, PromptEncoder(tok, sd.dataset.fields, sd.dataset.vocab, cfg.model.max_length), sd.test_examples


def test_scoring_gives_a_distribution_per_field_and_agrees_with_generation(trained):
    model, tok, enc, examples = trained
    scored = evaluate(model, tok, enc, examples, method="score", batch_size=32)
    generated = evaluate(model, tok, enc, examples, method="generate", batch_size=32)
    for p in scored.predictions:
        for f in FIELDS:
            assert sum(p.probs[f].values()) == pytest.approx(1.0)
            assert p.predicted[f] == max(p.probs[f], key=p.probs[f].get)
    assert scored.scores.parse_failures == 0 and set(scored.scores.calibration) == set(FIELDS)
    same = sum(s.predicted == g.predicted for s, g in zip(scored.predictions, generated.predictions))
    # Greedy generation takes the most probable *first token*; scoring the most probable
    # whole label line. They differ only where a label's later tokens overturn that.
    assert same >= 0.9 * len(examples), same


def _brute_force(model, tok, enc, ex, chosen, field):
    """log P(candidate | prompt, answer so far) of every label, one full forward each."""
    prompt = enc.encode_prompt(ex)[0]
    cands = [candidate_ids(enc, chosen, field, lab) for lab in enc.vocab[field]]
    shared = min(len(c) for c in cands)
    shared = next((i for i in range(shared) if any(c[i] != cands[0][i] for c in cands)), shared)
    out = []
    with torch.inference_mode():
        for c in cands:
            ids = torch.tensor([prompt + c])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            start = len(prompt) + shared
            out.append(sum(float(logp[t - 1, ids[0, t]]) for t in range(start, ids.shape[1])))
    top = max(out)
    z = sum(math.exp(v - top) for v in out)
    return {lab: math.exp(v - top) / z for lab, v in zip(enc.vocab[field], out)}


def test_multi_token_labels_are_scored_on_all_their_tokens(trained):
    model, tok, enc, examples = trained
    # A vocabulary whose labels share their first token and differ later, so that a
    # first-token-only score could not tell them apart.
    vocab = {
        "severity": ["critical", "critical issue", "low"],
        "component": ["ui", "user interface"],
        "reproducibility": ["always", "rare"],
    }
    multi = PromptEncoder(tok, FIELDS, vocab, enc.max_length)
    assert len(candidate_ids(multi, {}, "severity", "critical issue")) > len(
        candidate_ids(multi, {}, "severity", "critical")
    )
    ex = examples[:3]
    preds = score_labels(model, tok, multi, ex, batch_size=3)
    for e, p in zip(ex, preds):
        chosen: dict[str, str] = {}
        for f in FIELDS:
            expect = _brute_force(model, tok, multi, e, chosen, f)
            for lab in vocab[f]:
                assert p.probs[f][lab] == pytest.approx(expect[lab], abs=2e-3)
            chosen[f] = p.predicted[f]


def test_calibration_metrics_match_hand_computed_values():
    labels = ["a", "b"]
    gold = ["a", "b", "a", "b"]
    probs = [{"a": 0.9, "b": 0.1}, {"a": 0.4, "b": 0.6}, {"a": 0.3, "b": 0.7}, {"a": 0.2, "b": 0.8}]
    m = calibration_metrics(gold, probs, labels)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.3) + math.log(0.8)) / 4)
    # Multiclass Brier: sum over labels of (p - y)^2, averaged: (0.02 + 0.32 + 0.98 + 0.08) / 4.
    assert m["brier"] == pytest.approx((0.02 + 0.32 + 0.98 + 0.08) / 4)
    # Top-label confidences 0.9 (right), 0.6 (right), 0.7 (wrong), 0.8 (right), one per bin:
    # ECE = (|1-0.9| + |1-0.6| + |0-0.7| + |1-0.8|) / 4.
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 0.7 + 0.2) / 4)
    assert expected_calibration_error(["a", "a"], [{"a": 0.75, "b": 0.25}, {"a": 0.75, "b": 0.25}]) == pytest.approx(
        0.25
    )


def test_calibration_does_not_depend_on_the_order_the_labels_are_declared_in():
    """Seen on the own-data example: labels declared as ["urgent", "normal", "low"] were
    handed to scikit-learn, which reads the probability columns in sorted order, so each
    example's log-loss and Brier score used another label's probability."""
    gold = ["urgent", "low", "normal", "low"]
    probs = [
        {"urgent": 0.7, "normal": 0.2, "low": 0.1},
        {"urgent": 0.1, "normal": 0.3, "low": 0.6},
        {"urgent": 0.2, "normal": 0.5, "low": 0.3},
        {"urgent": 0.05, "normal": 0.15, "low": 0.8},
    ]
    declared = calibration_metrics(gold, probs, ["urgent", "normal", "low"])
    assert declared == calibration_metrics(gold, probs, ["low", "normal", "urgent"])
    assert declared["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.5) + math.log(0.8)) / 4)


def test_a_label_that_is_a_prefix_of_another_is_not_favoured():
    tok = load_tokenizer(str(_demo_model()), load_config(preset="demo").model)
    vocab = {"severity": ["high", "highest"], "component": ["ui"], "reproducibility": ["rare"]}
    enc = PromptEncoder(tok, FIELDS, vocab, 128)
    short, long = (candidate_ids(enc, {}, "severity", lab) for lab in ("high", "highest"))
    # Each candidate ends with the line break that closes it, so "high" is not a prefix of "highest".
    assert short[: len(short)] != long[: len(short)]


def _demo_model():
    from optuna_search.objectives._demo import ensure_demo_model

    return ensure_demo_model()


def test_score_is_deterministic_and_examples_keep_their_order(trained):
    model, tok, enc, examples = trained
    ex = [Example(e.id, e.instruction, e.input, e.labels, e.line) for e in examples[:10]]
    a = score_labels(model, tok, enc, ex, batch_size=4)
    b = score_labels(model, tok, enc, list(reversed(ex)), batch_size=7)
    assert [p.id for p in a] == [e.id for e in ex]
    by_id = {p.id: p for p in b}
    for p in a:
        for f in FIELDS:
            for lab, v in p.probs[f].items():
                assert v == pytest.approx(by_id[p.id].probs[f][lab], abs=1e-4)
