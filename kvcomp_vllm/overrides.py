"""What a client may change of the server's KV settings: the operator's rules for per-request overrides.

Per-request settings are a resource: a request that asks for `full` (or a budget of 0.99) holds its
whole KV and takes back the memory the operator compressed to serve everyone. The rules bound that:

- `allow: lower` (the default): a request may change any parameter, as long as the KV blocks it holds
  at its peak are no more than the server's own settings would hold for the same request;
- `allow: any`: every servable override (the behaviour of a private server);
- `allow: none`: no per-request settings at all;
- `policies`: the policies a request may name; `max_budget`: the largest budget it may ask for
  (a token count, or a ratio of its prompt).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .config import MAX_TOKENS, KVPolicyConfig, PolicyName

Allow = Literal["none", "lower", "any"]
REASONS = ("not_allowed", "policy", "budget", "footprint")  # metric labels of refused overrides


class OverrideRules(BaseModel):
    """The operator's bounds on per-request KV settings (`--kv-overrides`, a preset's `overrides:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    allow: Allow = Field("lower", description="none, lower (no larger KV footprint than the server's) or any")
    policies: tuple[PolicyName, ...] | None = Field(
        None, strict=False, description="policies a request may name; unset: any"
    )
    max_budget: int | float | None = Field(
        None, description="largest budget a request may ask for: a token count or a ratio in (0, 1]"
    )

    @model_validator(mode="after")
    def _check(self) -> OverrideRules:
        b = self.max_budget
        if b is not None and not (0 < b <= (1 if isinstance(b, float) else MAX_TOKENS)):
            raise ValueError(f"max_budget: must be a token count >= 1 or a ratio in (0, 1], got {b}")
        return self

    def refusal(self, request: KVPolicyConfig, asked: dict, prompt_len: int, prefix: str = "") -> tuple[str, str] | None:
        """(reason, message) where the fields a request `asked` for break a rule other than the
        footprint, else None; `request` is the config they resolve to."""
        if self.allow == "none":
            return "not_allowed", "this server accepts no per-request KV settings (--kv-overrides none)"
        if self.policies is not None and "policy" in asked and request.policy not in self.policies:
            allowed = ", ".join(self.policies)
            return "policy", f"{prefix}policy: '{request.policy}' is not one this server allows per request ({allowed})"
        if self.max_budget is not None and "budget" in asked:
            b = self.max_budget
            limit = max(1, math.ceil(b * prompt_len)) if isinstance(b, float) else b  # as budgets resolve
            if request.resolve_budget(prompt_len) > limit:
                return "budget", (
                    f"{prefix}budget: {request.budget} is more than this server allows per request "
                    f"({self.max_budget}, {limit} tokens of this prompt)"
                )
        return None
