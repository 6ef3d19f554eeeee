import pytest
from conftest import GAME_BUGS, MISTRAL_TOKENIZER

from optuna_search.objectives._data import Example, load_split
from optuna_search.objectives._prompt import IGNORE_INDEX, PromptEncoder, answer_text

FIELDS = ["severity", "component", "reproducibility"]


@pytest.fixture(scope="module")
def mistral():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MISTRAL_TOKENIZER))


@pytest.fixture(scope="module")
def train():
    return load_split("train", str(GAME_BUGS / "train.jsonl"), fields=FIELDS)


def _vocab(split):
    return {f: sorted(split.label_counts(f)) for f in FIELDS}


def test_loss_covers_exactly_the_answer_tokens_on_real_data(mistral, train):
    enc = PromptEncoder(mistral, FIELDS, _vocab(train), max_length=512)
    for ex in train.examples[:200]:
        e = enc.encode(ex)
        answer = [t for t in e.labels if t != IGNORE_INDEX]
        # The supervised tokens are one contiguous block at the end...
        assert e.labels[: e.prompt_length] == [IGNORE_INDEX] * e.prompt_length
        assert e.labels[e.prompt_length :] == e.input_ids[e.prompt_length :] == answer
        # ...and they are exactly the label lines plus EOS: no prompt, no summary.
        assert answer[-1] == mistral.eos_token_id
        assert mistral.decode(answer[:-1]).strip() == answer_text(ex.labels, FIELDS)


def test_no_example_loses_its_answer_at_512_tokens(mistral, train):
    enc = PromptEncoder(mistral, FIELDS, _vocab(train), max_length=512)
    truncated = 0
    for ex in train.examples:
        e = enc.encode(ex)
        assert len(e.input_ids) <= 512
        answer = [t for t in e.labels if t != IGNORE_INDEX]
        assert mistral.decode(answer[:-1]).strip() == answer_text(ex.labels, FIELDS)
        # The prompt still ends with the instruction marker after truncation.
        assert mistral.decode(e.input_ids[: e.prompt_length]).rstrip().endswith("[/INST]")
        truncated += e.truncated_tokens > 0
    assert truncated > 0, "expected some real reports to need truncation at 512 tokens"


def test_truncation_cuts_the_input_only(mistral):
    long = Example(
        "x", "Classify.", "word " * 2000, {"severity": "low", "component": "ui", "reproducibility": "rare"}, 1
    )
    vocab = {"severity": ["low"], "component": ["ui"], "reproducibility": ["rare"]}
    e = PromptEncoder(mistral, FIELDS, vocab, max_length=128).encode(long)
    assert len(e.input_ids) <= 128 and e.truncated_tokens > 1800
    assert mistral.decode([t for t in e.labels if t != IGNORE_INDEX][:-1]).strip() == answer_text(long.labels, FIELDS)
    text = mistral.decode(e.input_ids)
    assert text.startswith("<s> [INST] Classify.") or text.startswith("<s>[INST] Classify.")


def _documented_mistral_ids(tok, ex, fields, max_length, max_answer_tokens):
    """Mistral-Instruct's format written out by hand, as the first version encoded it:
    <s> + '[INST] instruction\\n\\n' + report (cut) + ' [/INST]', then ' answer' + </s>."""
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix, suffix = [tok.bos_token_id] + ids(f"[INST] {ex.instruction}\n\n"), ids(" [/INST]")
    body = ids(ex.input)[: max_length - len(prefix) - len(suffix) - max_answer_tokens]
    return prefix + body + suffix + ids(" " + answer_text(ex.labels, fields)) + [tok.eos_token_id]


def test_mistral_chat_template_gives_exactly_the_documented_ids(mistral, train):
    enc = PromptEncoder(mistral, FIELDS, _vocab(train), max_length=512)
    assert mistral.convert_ids_to_tokens(enc.stop_token_ids) == ["</s>"]
    for ex in train.examples:
        assert enc.encode(ex).input_ids == _documented_mistral_ids(mistral, ex, FIELDS, 512, enc.max_answer_tokens), (
            ex.id
        )


def test_a_tokenizer_without_a_chat_template_needs_one_configured(mistral):
    import copy

    from optuna_search.core import UserError
    from optuna_search.objectives._prompt import PLAIN_TEMPLATE, apply_chat_template_setting

    bare = copy.deepcopy(mistral)
    bare.chat_template = None
    with pytest.raises(UserError, match='model.chat_template = "plain"'):
        apply_chat_template_setting(bare, "auto")
    apply_chat_template_setting(bare, "plain")
    assert bare.chat_template == PLAIN_TEMPLATE
    vocab = {"severity": ["low"], "component": ["ui"], "reproducibility": ["rare"]}
    ex = Example("x", "Classify.", "Crash", {"severity": "low", "component": "ui", "reproducibility": "rare"}, 1)
    e = PromptEncoder(bare, FIELDS, vocab, max_length=64).encode(ex)
    assert bare.decode(e.input_ids[: e.prompt_length]).endswith("### Answer:\n")
    assert bare.decode([t for t in e.labels if t != IGNORE_INDEX]) == answer_text(ex.labels, FIELDS) + "</s>"
