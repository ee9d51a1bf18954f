"""The one configuration object of kvcomp-vllm: which policy, with which budget and parameters.

Every entry point (CLI flags, YAML presets, per-request overrides, the reference generator) builds a
`KVPolicyConfig`, so validation and its error messages live here and nowhere else.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo, model_validator

PolicyName = Literal["full", "streaming", "snapkv", "pyramid", "windowkv", "windowkv-per-head", "pod"]
POLICY_NAMES: tuple[str, ...] = PolicyName.__args__

# Which parameters each policy reads. Setting one a policy does not read is an error rather than a
# silent no-op, so a request is never served with different settings than it asked for.
# `cache_prefix` (raw prompt tokens kept for vLLM's prefix cache) applies to every compressing policy.
_SELECTION = {"budget", "window", "prefill_chunk", "cache_prefix"}
_POOLED = _SELECTION | {"pool_size", "pooling"}
POLICY_FIELDS: dict[str, frozenset[str]] = {
    "full": frozenset(),
    "streaming": frozenset({"budget", "sink", "prefill_chunk", "cache_prefix"}),
    "snapkv": frozenset(_POOLED),
    "pyramid": frozenset(_POOLED | {"beta", "tiers"}),
    "windowkv": frozenset(_SELECTION | {"window_size", "window_scoring", "concentration_threshold", "group_size"}),
    "windowkv-per-head": frozenset(
        _SELECTION | {"window_size", "window_sizes", "concentration_threshold", "group_size"}
    ),
    "pod": frozenset({"sink", "recent", "group_size", "groups", "select", "cache_prefix"} | _POOLED - {"prefill_chunk"}),
}
_NEEDS_BUDGET = frozenset({"streaming", "snapkv", "pyramid", "windowkv", "windowkv-per-head"})
_POD_SELECTION = frozenset({"budget", "window", "pool_size", "pooling"})  # pod reads them with select: snapkv only
WINDOWKV_WINDOW = 8  # windowkv's default window size (the official script's review_window_size)
WINDOWKV_GROUP = 8  # windowkv's default layers per group (the paper's and the official script's shared_layers)

# Upper bounds that hold before the model is known: no setting may ask a worker for work or memory
# beyond them. `check_model` then bounds token counts by the model's context length.
MAX_TOKENS = 1 << 24  # token counts: beyond any model's context
MAX_POOL_SIZE = 255  # pooling width: SnapKV pools over 5-13 tokens; the pooling buffer grows with it
MAX_LAYERS = 1024  # layer counts (group sizes, tiers)
MAX_BETA = 1000.0  # pyramid steepness: PyramidKV uses 20
_TOKEN_FIELDS = ("window", "sink", "recent", "prefill_chunk")  # and cache_prefix where an integer  # token counts bounded by the context


# Old field names still accepted, for one release, as aliases of the new ones (old -> new). Each logs a
# deprecation warning once per process; giving both with different values is an error naming both.
RENAMED = {"kernel": "pool_size"}
logger = logging.getLogger("vllm.kvcomp")  # under vLLM's logger, so its handlers and level apply
_WARNED: set[str] = set()


def field_name(field: str, info: ValidationInfo | None = None) -> str:
    """A field as the client spelled it: HTTP requests send `kv_<field>` (validation context `prefix`)."""
    return ((info.context or {}).get("prefix", "") if info is not None else "") + field


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def warn_renamed(old: str) -> None:
    """Log, once per process, that field `old` is deprecated (in every spelling: field, flag, HTTP field)."""
    if old in _WARNED:
        return
    _WARNED.add(old)
    new, flag = RENAMED[old], lambda f: "--kv-" + f.replace("_", "-")
    logger.warning(
        "kvcomp: %s (%s, kv_%s) is deprecated and will be removed in the next release: "
        "use %s (%s, kv_%s), the same setting", old, flag(old), old, new, flag(new), new,
    )


def _check_renamed(fields: dict, name=lambda field: field) -> set[str]:
    """Log each deprecated name among `fields` (once per process) and raise ValueError, naming both as
    `name` spells them, where a field is given by both names with different values; returns the old
    names given alongside an equal new one."""
    both = set()
    for old, new in RENAMED.items():
        if old not in fields:
            continue
        warn_renamed(old)
        if new not in fields:
            continue
        if fields[new] != fields[old]:
            o, n = name(old), name(new)
            raise ValueError(
                f"{o}, {n}: both given, with different values ({_short(fields[old])} and {_short(fields[new])}); "
                f"{o} is the deprecated name of {n}: give {n} alone"
            )
        both.add(old)  # the new name's own checks still apply to its value
    return both


def new_names(fields: dict) -> dict:
    """`fields` (KVPolicyConfig fields) with each deprecated name replaced by its new one, logging the
    deprecation once; ValueError where both names are given with different values."""
    _check_renamed(fields)
    renamed = {k: v for k, v in fields.items() if k not in RENAMED}
    for old, new in RENAMED.items():
        if old in fields:
            renamed.setdefault(new, fields[old])
    return renamed


class KVPolicyConfig(BaseModel):
    """A KV compression policy and its parameters, validated on construction.

    Types are strict (a budget sent as a string or a boolean is an error, not coerced) and every number
    is bounded, so no setting makes a worker allocate or loop in proportion to a value a client sent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    policy: PolicyName = Field("full", description="compression policy")
    budget: int | float | None = Field(
        None,
        description="tokens kept per layer and KV head: an integer count, or a ratio in (0, 1] "
        "of the prompt length (pyramid: the mean over layers)",
    )
    window: int = Field(
        32, ge=1, le=MAX_TOKENS,
        description="observation window: last prompt queries used for scoring (windowkv average scoring: its last half)",
    )
    pool_size: int = Field(
        7,
        ge=1,
        le=MAX_POOL_SIZE,
        validation_alias=AliasChoices("pool_size", "kernel"),  # `kernel`: its earlier name, deprecated (RENAMED)
        description="width of the 1-D pooling of token scores (odd), so neighbours of strong tokens are kept too",
    )
    pooling: Literal["avg", "max"] = Field("avg", description="pooling of token scores")
    beta: float = Field(
        20.0, ge=1.0, le=MAX_BETA, description="pyramid steepness: top layer keeps 1/beta of the bottom's share"
    )
    tiers: int | None = Field(
        None,
        ge=1,
        le=MAX_LAYERS,
        description="pyramid: number of tiers (layers sharing one budget, each tier one vLLM KV cache group; "
        "fewer tiers: less work per decode step); unset: one tier per layer, as in PyramidKV",
    )
    sink: int = Field(4, ge=0, le=MAX_TOKENS, description="first tokens always kept (streaming, pod)")
    recent: int = Field(256, ge=1, le=MAX_TOKENS, description="pod: last prompt tokens that keep per-layer keys")
    group_size: int | None = Field(
        None,
        ge=1,
        le=MAX_LAYERS,
        description="consecutive layers sharing indices (windowkv: also one budget per group) or keys (pod); "
        "unset: windowkv the largest divisor of the layer count up to 8, windowkv-per-head and pod 2",
    )
    groups: tuple[Annotated[tuple[StrictInt, ...], Field(strict=False)], ...] | None = Field(
        None,
        strict=False,  # a JSON list of lists is its form; its items stay strict
        description="pod: layer groups sharing distant keys, each a list of layers (any order; together every "
        "layer once), the lowest layer of each the owner; `kvcomp-vllm pod-calibrate` writes them from the "
        "model's attention; unset: consecutive groups of group_size",
    )
    select: Literal["none", "snapkv"] = Field(
        "none",
        description="pod: which distant tokens are kept (with shared keys): none, all of them; snapkv, the "
        "SnapKV choice within budget (proximal tokens included), per KV head",
    )
    window_size: int | Literal["auto"] | None = Field(
        None,
        description="tokens per window (windowkv: default 8); windowkv-per-head also 'auto' (the default) "
        "to choose from the attention pattern",
    )
    window_sizes: tuple[StrictInt, StrictInt] = Field(
        (8, 32),
        strict=False,  # a JSON list is the pair's form; its items stay strict
        description="windowkv-per-head auto: (size for spread attention, size for concentrated attention)",
    )
    window_scoring: Literal["auto", "max", "average"] = Field(
        "auto",
        description="windowkv: a window's score, 'max' (mean of its top half of token scores, for QA-like "
        "prompts) or 'average' (observing the last window // 2 queries); 'auto' picks max when attention is "
        "concentrated (concentration_threshold)",
    )
    prefill_chunk: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description="compress every this many prompt tokens during prefill (peak cache: budget + "
        "prefill_chunk per layer), so prompts longer than the KV pool fit; unset: once, after the prompt",
    )
    cache_prefix: int | Literal["auto"] = Field(
        "auto",
        description="prompt tokens kept raw and entered in vLLM's prefix cache: 'auto' keeps the tokens that "
        "hit the cache at admission and the leading blocks an earlier, different prompt also began with (the "
        "second sender of a shared prefix makes it a hit for the rest); an integer N keeps the hit and the "
        "first N (rounded down to whole blocks), so the first sender makes it a hit for the next",
    )
    concentration_threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="windowkv and windowkv-per-head auto: attention mass in the top 5% tokens that counts as concentrated",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, data, handler, info: ValidationInfo) -> KVPolicyConfig:
        """Validate, with errors naming each field as it was given (a deprecated name included)."""
        data, given = cls._renamed(data, info)
        config = handler(data)
        config._check(info, given)
        return config

    @staticmethod
    def _renamed(data, info: ValidationInfo) -> tuple[object, dict[str, str]]:
        """`data` with a deprecated name kept only where the new one is absent (the `pool_size` field also
        reads `kernel`, so its errors name the field as given), and {new: old} for those fields."""
        if not isinstance(data, dict):
            return data, {}
        both = _check_renamed(data, lambda field: field_name(field, info))
        given = {new: old for old, new in RENAMED.items() if old in data and new not in data}
        return {k: v for k, v in data.items() if k not in both}, given

    def _check(self, info: ValidationInfo, given: dict[str, str]) -> None:
        name = lambda field: field_name(given.get(field, field), info)  # noqa: E731 - as the client gave it
        extra = sorted(self.model_fields_set - POLICY_FIELDS[self.policy] - {"policy"})
        if extra:
            allowed = ", ".join(field_name(f, info) for f in sorted(POLICY_FIELDS[self.policy])) or "none"
            raise ValueError(
                f"{', '.join(map(name, extra))}: not a parameter of policy '{self.policy}' (its parameters: {allowed})"
            )
        if self.policy == "pod":
            self._check_pod_select(name)
        if self.policy in _NEEDS_BUDGET and self.budget is None:
            raise ValueError(f"{name('budget')}: policy '{self.policy}' needs a budget (token count or ratio in (0, 1])")
        if self.budget is not None:
            self._check_budget(name)
        if self.pool_size % 2 == 0:
            raise ValueError(f"{name('pool_size')}: must be odd so pooling keeps positions centred, got {self.pool_size}")
        listed = [layer for group in self.groups or () for layer in group]
        if len(listed) > MAX_LAYERS or any(not 0 <= layer < MAX_LAYERS for layer in listed):
            raise ValueError(f"{name('groups')}: at most {MAX_LAYERS} layers, each in [0, {MAX_LAYERS})")
        if isinstance(self.cache_prefix, int) and not 0 <= self.cache_prefix <= MAX_TOKENS:
            raise ValueError(f"{name('cache_prefix')}: must be 'auto' or a token count in [0, {MAX_TOKENS}], got {self.cache_prefix}")
        sizes = [("window_size", self.window_size)] if isinstance(self.window_size, int) else []
        for field, size in [*sizes, *(("window_sizes", s) for s in self.window_sizes)]:
            if not 1 <= size <= MAX_TOKENS:
                raise ValueError(f"{name(field)}: window sizes must lie in [1, {MAX_TOKENS}], got {size}")
        if self.policy == "windowkv" and self.window_size == "auto":
            raise ValueError(
                f"{name('window_size')}: windowkv tiles windows of one size (default 8); 'auto' sizes belong to "
                "policy 'windowkv-per-head'"
            )
        if self.prefill_chunk is not None and "window" in POLICY_FIELDS[self.policy] and self.prefill_chunk < self.window:
            raise ValueError(
                f"{name('prefill_chunk')}: {self.prefill_chunk} tokens is less than {name('window')} ({self.window}); "
                "each chunk's last queries score its compression"
            )

    def _check_pod_select(self, name) -> None:
        """pod reads the selection fields only with `select: snapkv`, which needs a budget and a window
        inside the recent tokens (the scored prefix must hold every distant token)."""
        if self.select == "none":
            given = sorted(self.model_fields_set & _POD_SELECTION)
            if given:
                raise ValueError(f"{', '.join(map(name, given))}: read by pod only with {name('select')} snapkv")
            return
        if self.budget is None:
            raise ValueError(
                f"{name('budget')}: pod with {name('select')} snapkv needs a budget (token count or ratio in (0, 1])"
            )
        if self.window > self.recent:
            raise ValueError(f"{name('window')}: {self.window} is more than {name('recent')} ({self.recent}); "
                             "pod's observation window must lie inside the recent tokens")

    def _floor(self, prefix: str = "") -> tuple[int, str]:
        """The fewest tokens a budget may keep, and what sets it."""
        return (self.sink + 1, f"{prefix}sink + 1") if self.policy == "streaming" else (self.window, f"{prefix}window")

    def _check_budget(self, name) -> None:
        b, prefix, name = self.budget, name(""), name("budget")
        if not math.isfinite(b):
            raise ValueError(f"{name}: must be a token count or a ratio in (0, 1], got {b!r}")
        if b <= 0:
            raise ValueError(f"{name}: must be positive (a token count, or a ratio in (0, 1]), got {b}")
        if isinstance(b, float):
            if b > 1.0:
                raise ValueError(f"{name}: a ratio must lie in (0, 1], got {b}; give an integer for a token count")
            return
        floor, floor_name = self._floor(prefix)
        if b < floor:
            raise ValueError(f"{name}: {b} tokens is less than {floor_name} ({floor}) for policy '{self.policy}'")
        if b > MAX_TOKENS:
            raise ValueError(f"{name}: {b} tokens is more than any context ({MAX_TOKENS} tokens)")

    def resolve_budget(self, prompt_len: int) -> int:
        """Token budget for a prompt of `prompt_len` tokens (ratios round up)."""
        if self.budget is None:
            return prompt_len
        if isinstance(self.budget, float):
            return max(1, math.ceil(self.budget * prompt_len))
        return int(self.budget)

    def check_model(self, num_layers: int, max_model_len: int | None = None, prefix: str = "") -> None:
        """Reject settings that cannot work with a model of `num_layers` layers and this context length
        (`prefix`: how the client spells fields, e.g. `kv_` over HTTP)."""
        if "group_size" in POLICY_FIELDS[self.policy] and self.groups is None:
            group = self.layer_group(num_layers)
            if group > num_layers or num_layers % group:
                raise ValueError(
                    f"{prefix}group_size: {group} does not divide the model's {num_layers} layers; "
                    f"choose one of {[g for g in range(1, num_layers + 1) if num_layers % g == 0]}"
                )
        if self.groups is not None:
            self._check_groups(num_layers, prefix)
        if self.tiers is not None and self.tiers > num_layers:
            raise ValueError(
                f"{prefix}tiers: {self.tiers} for a model of {num_layers} layers (a tier holds one layer or more); "
                f"use at most {num_layers}"
            )
        if max_model_len is None:
            return
        counts = {f: getattr(self, f) for f in _TOKEN_FIELDS if f in self.model_fields_set}
        if isinstance(self.budget, int):
            counts["budget"] = self.budget
        if isinstance(self.window_size, int):
            counts["window_size"] = self.window_size
        if isinstance(self.cache_prefix, int):
            counts["cache_prefix"] = self.cache_prefix
        for field, value in counts.items():
            if value is not None and value > max_model_len:
                raise ValueError(
                    f"{prefix}{field}: {value} tokens is larger than the model's context ({max_model_len} tokens)"
                )
        if isinstance(self.budget, float) and self.policy in _NEEDS_BUDGET:
            self.check_prompt(max_model_len, prefix)

    def _check_groups(self, num_layers: int, prefix: str) -> None:
        """`groups` must hold every layer of the model exactly once, in non-empty groups."""
        if "group_size" in self.model_fields_set:
            raise ValueError(
                f"{prefix}groups, {prefix}group_size: give one of them (groups lists the layers themselves)"
            )
        layers = [layer for group in self.groups for layer in group]
        if any(not group for group in self.groups) or sorted(layers) != list(range(num_layers)):
            raise ValueError(
                f"{prefix}groups: must hold each of the model's {num_layers} layers (0..{num_layers - 1}) "
                f"exactly once, in non-empty groups; got {_short([list(g) for g in self.groups])}"
            )

    def pod_groups(self, num_layers: int) -> tuple[tuple[int, ...], ...]:
        """PoD's layer groups, each ascending, in order of their lowest layer (the owner): `groups`, or
        consecutive runs of `layer_group(num_layers)` layers."""
        if self.groups is not None:
            return tuple(sorted(tuple(sorted(g)) for g in self.groups))
        size = self.layer_group(num_layers)
        return tuple(tuple(range(start, min(start + size, num_layers))) for start in range(0, num_layers, size))

    def check_prompt(self, prompt_len: int, prefix: str = "") -> None:
        """Reject a ratio budget that keeps fewer of this prompt's tokens than the window (or sink + 1),
        as an integer budget below it is rejected, rather than serve the window instead."""
        floor, floor_name = self._floor(prefix)
        if not isinstance(self.budget, float) or prompt_len <= floor:
            return
        kept = self.resolve_budget(prompt_len)
        if kept < floor:
            raise ValueError(
                f"{prefix}budget: ratio {self.budget} keeps {kept} of {prompt_len} prompt tokens, fewer than "
                f"{floor_name} ({floor}) for policy '{self.policy}'; raise it or give a token count"
            )

    def layer_group(self, num_layers: int) -> int:
        """Consecutive layers per group: `group_size`, or the policy's default for a model of `num_layers` layers."""
        if self.group_size is not None:
            return self.group_size
        if self.policy == "windowkv":
            return max(g for g in range(1, min(WINDOWKV_GROUP, num_layers) + 1) if num_layers % g == 0)
        return 2

    def describe(self) -> str:
        """One line naming the policy and the parameters it reads, for logs and responses."""
        fields = POLICY_FIELDS[self.policy]
        if self.policy == "pod" and self.select == "none":  # plain PoD reads no selection field
            fields = fields - _POD_SELECTION - {"select"}
        shown = [k for k in sorted(fields) if k != "cache_prefix" or k in self.model_fields_set]
        params = {k: getattr(self, k) for k in shown if getattr(self, k) is not None}
        return self.policy + "".join(f" {k}={v}" for k, v in params.items())


def request_config(server: KVPolicyConfig, overrides: dict | None, prefix: str = "") -> KVPolicyConfig:
    """The config one request runs with: the server's, with the request's fields on top.

    A request naming another policy starts from that policy's defaults (the server's parameters
    belong to the server's policy); otherwise its fields replace the server's. Errors name fields
    with `prefix`, as the request spelled them.
    """
    if not overrides:
        return server
    if not isinstance(overrides, dict):
        raise ValueError("per-request settings must be an object of policy fields")
    context = {"prefix": prefix}
    if overrides.get("policy", server.policy) != server.policy:
        return KVPolicyConfig.model_validate(overrides, context=context)
    own = server.model_dump(exclude_unset=True)
    for old, new in RENAMED.items():
        if old in overrides:  # the request's old name replaces the server's field, as its new name would
            own.pop(new, None)
    return KVPolicyConfig.model_validate({**own, **overrides}, context=context)


def settings_error(err: ValidationError, prefix: str = "") -> str:
    """One clause per field at fault, naming it as the client did (`prefix`) and what it sent (cut short)."""
    clauses: dict[str, tuple[list[str], str]] = {}
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e.get("loc"):  # a model-level check: its message names the fields already
            clauses.setdefault(msg, ([], ""))
            continue
        got = repr(e.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        messages, _ = clauses.setdefault(prefix + str(e["loc"][0]), ([], f" (got {got})"))
        if msg.removeprefix("Input ") not in messages:
            messages.append(msg.removeprefix("Input "))
    return "; ".join(f"{head}: {' or '.join(msgs)}{got}" if msgs else head for head, (msgs, got) in clauses.items())


def _preset(path: str | Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping of KVPolicyConfig fields")
    return data


PRESET_NOTES = ("overrides", "calibration")  # preset keys that are no config field: rules, and how groups were found


def load_preset(path: str | Path) -> KVPolicyConfig:
    """Read a YAML preset (see configs/, or `pod-calibrate`'s JSON) into a validated config (its
    `overrides:` rules and `calibration:` notes aside)."""
    return KVPolicyConfig(**{k: v for k, v in _preset(path).items() if k not in PRESET_NOTES})


def preset_overrides(path: str | Path) -> dict:
    """A preset's `overrides:` mapping (the operator's rules for per-request settings), or {}."""
    rules = _preset(path).get("overrides") or {}
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: overrides: must be a mapping (allow, policies, max_budget)")
    return rules
