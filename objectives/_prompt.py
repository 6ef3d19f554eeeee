"""Prompt/answer encoding through the tokenizer's chat template.

A training example is one conversation: the user turn is the instruction, a blank line
and the report; the assistant turn is the answer, one ``Field: label`` line per field.
It is rendered with the tokenizer's own chat template (``model.chat_template = "auto"``),
the documented plain template (``"plain"``, below), or a Jinja file. The loss covers the
answer tokens and the template's end-of-turn token only (everything else gets label
-100). When an example is longer than ``max_length`` the *report text* is cut, never the
template's markers or the answer, so no example ever loses its labels.

The template is rendered once around placeholders and split into pieces (prompt text
before the report, after the report, before and after the answer); each piece is
tokenized on its own, so the report can be cut in tokens. For Mistral-Instruct this gives
exactly ``<s> [INST] instruction\\n\\nreport [/INST] answer</s>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna_search.core import UserError
from optuna_search.objectives._data import Example

IGNORE_INDEX = -100
# model.chat_template = "plain": for tokenizers that ship no chat template.
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n### Answer:\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
_REPORT = "\u2063REPORT\u2063"  # invisible separators: never part of a real template
_ANSWER = "\u2063ANSWER\u2063"


def answer_text(labels: dict[str, str], fields: list[str]) -> str:
    return "\n".join(f"{field_label(f)}: {labels[f]}" for f in fields)


def field_label(field_name: str) -> str:
    return field_name.capitalize()


def apply_chat_template_setting(tokenizer: Any, setting: str) -> None:
    """Give the tokenizer the template ``model.chat_template`` asks for (or check it has one)."""
    if setting == "plain":
        tokenizer.chat_template = PLAIN_TEMPLATE
    elif setting != "auto":
        path = Path(setting).expanduser()
        if not path.is_file():
            raise UserError(f"model.chat_template '{setting}' is neither auto, plain nor an existing Jinja file")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    elif not getattr(tokenizer, "chat_template", None):
        raise UserError(
            'the tokenizer has no chat template; set model.chat_template = "plain" (the documented plain '
            "template) or the path of a Jinja template file"
        )


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated_tokens: int


@dataclass(frozen=True)
class _AnswerFrame:
    before: str
    """Text between the prompt and the answer (e.g. Mistral's space)."""
    end_ids: tuple[int, ...]
    """The template's end-of-turn token(s) after the answer (e.g. </s>, <|im_end|>)."""


class PromptEncoder:
    def __init__(self, tokenizer: Any, fields: list[str], vocab: dict[str, list[str]], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.fields = fields
        self.vocab = vocab
        self.max_length = max_length
        self._pieces: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the tokenizer has no chat template; set model.chat_template (see the README)")
        self._frame = self._answer_frame()
        # Reserve room for the longest possible answer, so the prompt an example gets does
        # not depend on its gold label (train and eval prompts are then identical).
        longest = {f: max(vocab[f], key=lambda lab: len(self._ids(f"{field_label(f)}: {lab}"))) for f in fields}
        self.max_answer_tokens = len(self.answer_ids(longest))

    # -- template pieces -------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:
            raise UserError(
                f"the chat template cannot render a user/assistant conversation ({e}); set model.chat_template"
            ) from None

    def _prompt_pieces(self, instruction: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The prompt's token ids before and after the report, per instruction (most
        datasets have one instruction: rendered once, kept with this encoder)."""
        if instruction not in self._pieces:
            self._pieces[instruction] = self._render_pieces(instruction)
        return self._pieces[instruction]

    def _render_pieces(self, instruction: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        text = self._render([{"role": "user", "content": f"{instruction}\n\n{_REPORT}"}], True)
        if text.count(_REPORT) != 1:
            raise UserError("the chat template does not place the user's message once; set model.chat_template")
        before, after = text.split(_REPORT)
        return tuple(self._ids(before)), tuple(self._ids(after))

    def _answer_frame(self) -> _AnswerFrame:
        user = [{"role": "user", "content": "x"}]
        prompt = self._render(user, True)
        full = self._render(user + [{"role": "assistant", "content": _ANSWER}], False)
        if not full.startswith(prompt) or full.count(_ANSWER) != 1:
            raise UserError(
                "the chat template renders the assistant's answer in a way this tool cannot split; "
                'set model.chat_template = "plain" or give a Jinja file'
            )
        before, after = full[len(prompt) :].split(_ANSWER)
        return _AnswerFrame(before, self._end_of_turn(after))

    def _end_of_turn(self, after: str) -> tuple[int, ...]:
        """The tokens that close the assistant's turn: up to and including the first
        special token after the answer (what follows, e.g. a newline, is not learned);
        the EOS token when the template writes none."""
        ids = self._ids(after)
        special = set(self.tokenizer.all_special_ids)
        for i, t in enumerate(ids):
            if t in special:
                return tuple(ids[: i + 1])
        if self.tokenizer.eos_token_id is None:
            raise UserError(
                "the tokenizer has no EOS token and its template ends no turn; use a causal-LM tokenizer that "
                "defines one"
            )
        return (self.tokenizer.eos_token_id,)

    @property
    def stop_token_ids(self) -> list[int]:
        """Generation stops at the end-of-turn token (and at EOS)."""
        ids = [self._frame.end_ids[-1]]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @property
    def answer_prefix(self) -> str:
        return self._frame.before

    @property
    def end_ids(self) -> list[int]:
        return list(self._frame.end_ids)

    # -- encoding --------------------------------------------------------------------
    def answer_ids(self, labels: dict[str, str]) -> list[int]:
        return self._ids(self._frame.before + answer_text(labels, self.fields)) + list(self._frame.end_ids)

    def encode_prompt(self, ex: Example) -> tuple[list[int], int]:
        """Prompt token ids (truncated report) and how many report tokens were cut."""
        before, after = self._prompt_pieces(ex.instruction)
        body = self._ids(ex.input)
        budget = self.max_length - len(before) - len(after) - self.max_answer_tokens
        if budget < 1:
            raise UserError(
                f"example {ex.id}: instruction, template and answer alone need "
                f"{self.max_length - budget + 1} tokens, more than model.max_length = {self.max_length}; "
                "raise model.max_length or shorten the instruction"
            )
        cut = max(0, len(body) - budget)
        return list(before) + body[:budget] + list(after), cut

    def encode(self, ex: Example) -> Encoded:
        prompt, cut = self.encode_prompt(ex)
        answer = self.answer_ids(ex.labels)
        return Encoded(
            input_ids=prompt + answer,
            labels=[IGNORE_INDEX] * len(prompt) + answer,
            prompt_length=len(prompt),
            truncated_tokens=cut,
        )

    def to_hf_dataset(self, examples: list[Example]):
        """A ``datasets.Dataset`` with input_ids / attention_mask / labels / length."""
        import datasets

        enc = [self.encode(e) for e in examples]
        return datasets.Dataset.from_dict(
            {
                "input_ids": [e.input_ids for e in enc],
                "attention_mask": [[1] * len(e.input_ids) for e in enc],
                "labels": [e.labels for e in enc],
                "length": [len(e.input_ids) for e in enc],
            }
        )
