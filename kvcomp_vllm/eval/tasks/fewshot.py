"""Few-shot question classification in the style of TREC: label a question by the type of its answer.

The context is many labelled example questions (as many as fit the length); the last question is
unlabelled. Questions come from templates written here, one set per answer type, so the label of the
final question is shown by examples of the same template earlier in the context.
"""

from __future__ import annotations

import random

from .base import Gap, PromptBuilder, Sample
from .words import ADJECTIVES, CITIES, NAMES, NOUNS

TEMPLATES = {
    "abbreviation": ["What does {A} stand for?", "What is the full form of {A}?", "{A} is short for what?"],
    "description": ["Why does a {n} {verb}?", "How does a {a} {n} work?", "What is the meaning of the word {n}?"],
    "entity": ["Which tool is used to build a {n}?", "What animal lives near the {a} {n}?",
               "What colour is the {n} in {c}?"],
    "human": ["Who built the first {n} in {c}?", "Who was the friend of {p} in the {a} {n}?",
              "Who painted the {a} {n}?"],
    "location": ["Where is the {a} {n} of {c}?", "In which country is {c}?", "Where did {p} find the {n}?"],
    "number": ["How many {n}s are there in {c}?", "When was the {a} {n} opened?", "How far is {c} from the {n}?"],
}
VERBS = ["float", "rust", "glow", "sink", "bend", "crack", "shine", "freeze"]


def _question(label: str, rng: random.Random) -> str:
    return rng.choice(TEMPLATES[label]).format(
        A="".join(rng.choices("ABCDEFGHKLMNPRSTW", k=3)), n=rng.choice(NOUNS), a=rng.choice(ADJECTIVES),
        c=rng.choice(CITIES), p=rng.choice(NAMES), verb=rng.choice(VERBS),
    )


def make(builder: PromptBuilder, length: int, rng: random.Random, depth: float | None = None, **kw) -> Sample:
    labels = sorted(TEMPLATES)
    head = f"Classify each question by the type of its answer: {', '.join(labels)}."
    target = rng.choice(labels)
    final = f"Question: {_question(target, rng)}"
    fixed = len(builder.ids(head)) + len(builder.ids(final)) + 3 * len(builder.newline)
    room = length - len(builder.head) - len(builder.tail) - len(builder.ids("Type:")) - fixed
    examples: list[str] = []
    while True:
        label = rng.choice(labels)
        example = f"Question: {_question(label, rng)}\nType: {label}"
        cost = len(builder.ids(example)) + len(builder.newline)
        if cost > room:
            break
        examples.append(example)
        room -= cost
    # Whatever does not fit a whole example is filler text before the examples.
    pieces = [head, Gap(), *examples, final]
    return builder.compose("fewshot", length, pieces, "Type:", target, rng, **kw)
