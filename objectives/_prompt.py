"""Prompt/answer encoding with answer-only loss and input-side truncation.

A training example is ``prefix + input + suffix`` (the prompt, Mistral-Instruct's
``[INST] ... [/INST]`` format) followed by the answer: one ``Field: label`` line per
field, then EOS. The loss covers the answer tokens only (prompt tokens get label -100).
When an example is longer than ``max_length`` the *input text* is cut, never the
instruction markers or the answer, so no example ever loses its labels.

Pieces are tokenized separately and concatenated; training and evaluation use the same
function, so the model sees identical token sequences in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna_search.objectives._data import Example
from optuna_search.search._errors import UserError

IGNORE_INDEX = -100


def answer_text(labels: dict[str, str], fields: list[str]) -> str:
    return "\n".join(f"{f.capitalize()}: {labels[f]}" for f in fields)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated_tokens: int


class PromptEncoder:
    def __init__(self, tokenizer: Any, fields: list[str], vocab: dict[str, list[str]], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.fields = fields
        self.max_length = max_length
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no EOS token; use a causal-LM tokenizer that defines one")
        self._suffix = self._ids(" [/INST]")
        # Reserve room for the longest possible answer, so the prompt an example gets does
        # not depend on its gold label (train and eval prompts are then identical).
        longest = {f: max(vocab[f], key=lambda lab: len(self._ids(f"{f}: {lab}"))) for f in fields}
        self.max_answer_tokens = len(self._answer_ids(longest))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _answer_ids(self, labels: dict[str, str]) -> list[int]:
        return self._ids(" " + answer_text(labels, self.fields)) + [self.tokenizer.eos_token_id]

    def _prefix_ids(self, instruction: str) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self._ids(f"[INST] {instruction}\n\n")

    def encode_prompt(self, ex: Example) -> tuple[list[int], int]:
        """Prompt token ids (truncated input) and how many input tokens were cut."""
        prefix = self._prefix_ids(ex.instruction)
        body = self._ids(ex.input)
        budget = self.max_length - len(prefix) - len(self._suffix) - self.max_answer_tokens
        if budget < 1:
            raise UserError(
                f"example {ex.id}: instruction and answer alone need "
                f"{self.max_length - budget + 1} tokens, more than model.max_length = {self.max_length}; "
                "raise model.max_length or shorten the instruction"
            )
        cut = max(0, len(body) - budget)
        return prefix + body[:budget] + self._suffix, cut

    def encode(self, ex: Example) -> Encoded:
        prompt, cut = self.encode_prompt(ex)
        answer = self._answer_ids(ex.labels)
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
