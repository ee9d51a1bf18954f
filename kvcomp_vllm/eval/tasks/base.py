"""Prompt assembly shared by the task families: exact token lengths over natural filler text.

A task describes its prompt as pieces: fixed text (instructions, inserted facts, the question) and
`Gap`s that are filled with consecutive filler paragraphs. `PromptBuilder.compose` tokenizes the
fixed pieces, gives the gaps every remaining token (split by their weights) and wraps the whole in
the model's chat template, so a prompt is exactly `length` model tokens long, answer prefix included.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_MARK = "\x00CONTENT\x00"
ANSWER_TOKENS = 16  # tokens generated per prompt: every answer is a few words or digits


@dataclass(frozen=True)
class Sample:
    """One prompt of a task: its token ids, the expected answer and where it came from."""

    task: str
    length: int  # prompt tokens, exactly len(prompt_ids)
    prompt_ids: tuple[int, ...]
    answer: str
    depth: float | None = None  # needle: fraction of the filler before the fact
    index: int = 0
    max_tokens: int = ANSWER_TOKENS


@dataclass(frozen=True)
class Gap:
    """Filler of `weight` share of the tokens left over by the fixed pieces."""

    weight: float = 1.0


class TooShort(ValueError):
    """The fixed text of a task does not fit the requested length."""


class PromptBuilder:
    """Tokenizer-aware prompt assembly over a list of filler paragraphs."""

    def __init__(self, tokenizer, paragraphs: list[str], chat: bool | None = None):
        self.tokenizer = tokenizer
        self.paragraphs = paragraphs
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        self.newline = self.ids("\n")
        self._paragraph_ids: dict[int, list[int]] = {}
        if self.chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": _MARK}], add_generation_prompt=True, tokenize=False
            )
            head, tail = text.split(_MARK)
            self.head, self.tail = self.ids(head), self.ids(tail)
        else:
            bos = tokenizer.bos_token_id
            self.head = [bos] if bos is not None else []
            self.tail = self.newline

    def ids(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _paragraph(self, i: int) -> list[int]:
        if i not in self._paragraph_ids:
            self._paragraph_ids[i] = self.ids(self.paragraphs[i])
        return self._paragraph_ids[i]

    def filler(self, n: int, cursor: list[int]) -> list[int]:
        """Exactly `n` tokens of paragraphs from `cursor[0]` on (advanced), ending in a newline."""
        if n <= len(self.newline):
            return self.newline[:n]
        body: list[int] = []
        while len(body) < n - len(self.newline):
            body += self._paragraph(cursor[0] % len(self.paragraphs)) + self.newline
            cursor[0] += 1
        return body[: n - len(self.newline)] + self.newline

    def compose(
        self, task: str, length: int, pieces: list, answer_prefix: str, answer: str, rng: random.Random, **sample
    ) -> Sample:
        """A `length`-token Sample from fixed strings and Gaps (each string gets a trailing newline)."""
        fixed = [self.ids(p) + self.newline if isinstance(p, str) else None for p in pieces]
        prefix = self.ids(answer_prefix) if answer_prefix else []
        used = len(self.head) + len(self.tail) + len(prefix) + sum(len(f) for f in fixed if f is not None)
        room = length - used
        if room < 0:
            raise TooShort(f"{task}: {used} tokens of fixed text do not fit a {length}-token prompt")
        gaps = [p for p in pieces if isinstance(p, Gap)]
        total = sum(g.weight for g in gaps) or 1.0
        sizes = [int(room * g.weight / total) for g in gaps]
        if sizes:
            sizes[-1] += room - sum(sizes)
        elif room:
            raise TooShort(f"{task}: no gap to fill {room} tokens")
        cursor = [rng.randrange(len(self.paragraphs))]
        content: list[int] = []
        sizes_iter = iter(sizes)
        for piece, ids in zip(pieces, fixed):
            content += ids if ids is not None else self.filler(next(sizes_iter), cursor)
        prompt = self.head + content + self.tail + prefix
        assert len(prompt) == length, (task, len(prompt), length)
        return Sample(task=task, length=length, prompt_ids=tuple(prompt), answer=answer, **sample)


def spread(count: int, rng: random.Random) -> list[Gap]:
    """`count + 1` gaps of random weights: facts land at random depths of the filler."""
    return [Gap(rng.random() + 0.05) for _ in range(count + 1)]
