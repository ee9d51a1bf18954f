"""Named policy variants for one grid: `--variants 'snapkv-k7=snapkv:pool_size=7;snapkv-k15=snapkv:pool_size=15'`.

A variant is a policy with parameters of its own, swept over the grid's budgets (or one pinned with
`budget=`) and reported as its own row, so several parameter sets share one full-KV reference.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..config import POLICY_NAMES
from .budgets import parse_budget

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class Variant(BaseModel):
    """A row of the grid: `name` (used in labels and file names), its policy, parameters and pinned budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    policy: str
    params: dict[str, int | float | bool | str] = {}
    budget: int | float | None = None

    @field_validator("name")
    @classmethod
    def _usable_name(cls, name: str) -> str:
        if name == "full":
            raise ValueError("'full' is the reference, not a variant name")
        if not _NAME.fullmatch(name):
            raise ValueError(f"name {name!r}: letters, digits and _.+- only (it names the needle plot's file)")
        return name

    @model_validator(mode="after")
    def _policy_and_params(self) -> Variant:
        if self.policy not in POLICY_NAMES or self.policy == "full":
            raise ValueError(f"policy {self.policy!r}: not one of {', '.join(p for p in POLICY_NAMES if p != 'full')}")
        if "recent" in self.params:
            raise ValueError("pod's `recent` is the budget: pin it with budget=N or sweep it with --budgets")
        return self


def messages(err: ValueError) -> str:
    """A validation error as one line: our own messages as written, pydantic's with the field they name."""
    if not isinstance(err, ValidationError):
        return str(err)
    return "; ".join(e["msg"].removeprefix("Value error, ") if e["type"] == "value_error"
                     else f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def _value(text: str) -> int | float | bool | str:
    """A parameter value: JSON scalars (7, 0.5, true) as themselves, anything else as text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool | str) else text


def parse_variant(text: str) -> Variant:
    """'NAME=POLICY[:KEY=VALUE,...]' -> a `Variant`; `budget=` pins one budget (a ratio or tokens)."""
    name, sep, rest = text.strip().partition("=")
    if not sep:
        raise ValueError(f"variant {text.strip()!r}: write NAME=POLICY[:KEY=VALUE,...]")
    policy, _, fields = rest.partition(":")
    params: dict = {}
    budget = None
    for item in filter(None, (f.strip() for f in fields.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {name.strip()}: {item!r} is not KEY=VALUE")
        if key.strip() == "budget":
            budget = parse_budget(value)
        else:
            params[key.strip()] = _value(value.strip())
    try:
        return Variant(name=name.strip(), policy=policy.strip(), params=params, budget=budget)
    except ValidationError as err:
        raise ValueError(f"variant {name.strip()}: {messages(err)}") from None


def parse_variants(text: str) -> list[Variant]:
    """';'-separated variants; names must be unique."""
    variants = [parse_variant(part) for part in text.split(";") if part.strip()]
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"variant names repeat: {', '.join(repeated)}")
    return variants
