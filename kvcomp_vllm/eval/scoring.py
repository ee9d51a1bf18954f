"""The answer check: exact, so a score never depends on a judge or a fuzzy match.

A completion counts as correct when, after leading whitespace, it starts with the expected value and
the value is not the prefix of a longer word or number ("4393" does not match "43936 ..."). Prompts
end with an answer prefix ("The pass key is"), so a model that knows the answer writes it first.
"""

from __future__ import annotations


def check_answer(generated: str, expected: str) -> bool:
    """True when `generated` (left-stripped) starts with `expected` followed by a non-alphanumeric or the end."""
    text = generated.lstrip()
    if not expected or not text.startswith(expected):
        return False
    rest = text[len(expected):]
    return not rest or not rest[0].isalnum()
