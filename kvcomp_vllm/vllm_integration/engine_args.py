"""`--kv-*` flags for `vllm serve`, and the start-up check of the engine's kvcomp settings.

The flags fold into `additional_config["kvcomp"]`; `LLM(..., additional_config={"kvcomp": {...}})`
is the same setting from Python. Settings are validated when vLLM builds its engine config, after
the model's config is read but before any weights load, so a bad value, or a vLLM feature the
compression is not tested with (`refusals`), stops start-up at once.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from ..config import POLICY_NAMES, RENAMED, KVPolicyConfig, load_preset, preset_overrides, settings_error
from ..overrides import OverrideRules
from ..pod.geometry import mismatch
from ..policies import make_policy
from .compat import (
    EngineArgs,
    async_scheduling,
    cpu_attention_isa,
    cpu_block_tilings,
    init_logger,
    mixed_full_cudagraphs,
    patch,
    platform_name,
    serve_subcommand,
    set_scheduler_cls,
    vllm_support,
    vllm_tested,
    vllm_version,
)
from .refusals import check_features
from .scheduler import KVCOMP_SCHEDULERS, scheduler_class
from .attention_layers import other_layer_kinds
from .settings import CONFIG_KEY, OVERRIDES_KEY, engine_settings, model_layers, num_layers, remember_served

logger = init_logger("vllm.kvcomp")  # under vLLM's logger, so its handlers and level apply


class KVSettingsError(ValueError):
    """kvcomp settings the engine cannot serve: `vllm serve` prints the message alone and exits."""


def _budget(text: str) -> int | float:
    """`2048` is a token count, `0.1` a ratio of the prompt."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a token count or a ratio in (0, 1], got {text!r}") from None


def _cache_prefix(text: str) -> int | str:
    """`auto` or a token count."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cache prefix must be 'auto' or a token count, got {text!r}") from None


# flag -> (KVPolicyConfig field, argparse type, help)
FLAGS: dict[str, tuple[str, object, str]] = {
    "--kv-budget": ("budget", _budget, "tokens kept per layer and KV head (2048) or ratio of the prompt (0.1)"),
    "--kv-window": ("window", int, "observation window: last prompt queries used for scoring"),
    "--kv-pool-size": ("pool_size", int, "odd width of the 1-D pooling of token scores (default 7)"),
    "--kv-pooling": ("pooling", str, "pooling of token scores: avg or max"),
    "--kv-beta": ("beta", float, "pyramid steepness"),
    "--kv-tiers": ("tiers", int, "pyramid: number of tiers (layers sharing a budget, each one KV cache group); default one per layer"),
    "--kv-sink": ("sink", int, "first tokens always kept (streaming, pod)"),
    "--kv-recent": ("recent", int, "pod: last prompt tokens with per-layer keys"),
    "--kv-group-size": ("group_size", int, "consecutive layers sharing a selection (windowkv: and a budget) or keys (pod)"),
    "--kv-window-size": ("window_size", str, "windowkv: tokens per window (default 8); windowkv-per-head: or auto"),
    "--kv-window-scoring": ("window_scoring", str, "windowkv: window scoring, max, average or auto (from the attention pattern)"),
    "--kv-concentration-threshold": ("concentration_threshold", float, "windowkv auto: top-5% attention share that counts as concentrated"),
    "--kv-prefill-chunk": ("prefill_chunk", int, "compress every N prompt tokens during prefill, so prompts longer than the KV pool fit"),
    "--kv-cache-prefix": ("cache_prefix", _cache_prefix, "with prefix caching: prompt tokens kept raw and cached, "
                          "auto (those that hit the cache, and a prefix an earlier, different prompt began with) or the first N "
                          "(whole blocks), so the next request sharing them hits"),
}
# Deprecated flags, accepted for one release: flag -> (old KVPolicyConfig field, argparse type), the field
# mapping to its new name in KVPolicyConfig (config.RENAMED), which also logs the deprecation once.
OLD_FLAGS: dict[str, tuple[str, object]] = {"--kv-kernel": ("kernel", int)}


def add_kv_arguments(parser) -> None:
    """Add the kvcomp flag group to a vLLM argument parser."""
    group = parser.add_argument_group("kvcomp", "KV cache compression (kvcomp-vllm): `vllm serve --help=kvcomp`")
    group.add_argument("--kv-policy", choices=POLICY_NAMES, default=None, help="KV compression policy")
    group.add_argument("--kv-config", default=None, help="YAML preset from configs/; flags override its fields")
    for flag, (field, kind, text) in FLAGS.items():
        group.add_argument(flag, dest=f"kv_{field}", type=kind, default=None, help=text)
    for flag, (field, kind) in OLD_FLAGS.items():
        new = "--kv-" + RENAMED[field].replace("_", "-")
        group.add_argument(flag, dest=f"kv_{field}", type=kind, default=None, help=f"deprecated name of {new}")
    group.add_argument("--kv-overrides", choices=("none", "lower", "any"), default=None,
                       help="what a request may change: lower (default: no more KV than the server's settings), any, none")
    group.add_argument("--kv-override-policies", default=None, help="comma-separated policies a request may name")
    group.add_argument("--kv-override-max-budget", type=_budget, default=None,
                       help="largest budget a request may ask for (token count or ratio)")


def override_rules_from_args(args: argparse.Namespace) -> dict:
    """The operator's rules for per-request settings (preset `overrides:`, then flags), validated; a
    server started from the command line always has them."""
    rules = preset_overrides(args.kv_config) if getattr(args, "kv_config", None) else {}
    if getattr(args, "kv_overrides", None):
        rules["allow"] = args.kv_overrides
    if getattr(args, "kv_override_policies", None):
        rules["policies"] = [p.strip() for p in args.kv_override_policies.split(",") if p.strip()]
    if getattr(args, "kv_override_max_budget", None) is not None:
        rules["max_budget"] = args.kv_override_max_budget
    return validated_rules(rules).model_dump()  # unset fields too: `vllm serve` defaults to allow: lower


def validated_rules(rules: dict) -> OverrideRules:
    """Override rules from raw settings; validation errors become one readable `KVSettingsError`."""
    try:
        return OverrideRules(**rules)
    except ValidationError as err:
        raise KVSettingsError(f"invalid kvcomp override rules: {settings_error(err)}") from None


def settings_from_args(args: argparse.Namespace) -> dict | None:
    """The kvcomp settings the flags ask for, validated, or None where no flag was given."""
    settings: dict = {}
    if getattr(args, "kv_config", None):
        settings = load_preset(args.kv_config).model_dump(exclude_unset=True)
    if getattr(args, "kv_policy", None):
        settings["policy"] = args.kv_policy
    for field, _, _ in FLAGS.values():
        value = getattr(args, f"kv_{field}", None)
        if value is not None:
            settings[field] = int(value) if field == "window_size" and str(value).isdigit() else value
    for old, _ in OLD_FLAGS.values():
        value = getattr(args, f"kv_{old}", None)
        if value is not None:
            if getattr(args, f"kv_{RENAMED[old]}", None) is None:
                settings.pop(RENAMED[old], None)  # the flag overrides the preset's field, as its new name would
            settings[old] = value
    if not settings:
        return None
    return validated(settings).model_dump(exclude_unset=True)


def validated(settings: dict) -> KVPolicyConfig:
    """A config from raw settings; validation errors become one readable ValueError."""
    try:
        return KVPolicyConfig(**settings)
    except ValidationError as err:
        raise KVSettingsError(f"invalid kvcomp settings: {settings_error(err)}") from None


def warn_if_untested_vllm() -> None:
    """One warning line at start-up where the installed vLLM is not a minor kvcomp-vllm is tested with."""
    if not vllm_tested():
        logger.warning("kvcomp: vLLM %s on %s is %s", vllm_version(), platform_name(), vllm_support())


def check_engine_config(vllm_config) -> None:
    """Validate the engine's kvcomp settings against its model, adapt the engine, log the budgets."""
    warn_if_untested_vllm()
    remember_served(vllm_config)
    rules = (vllm_config.additional_config or {}).get(OVERRIDES_KEY)
    if rules is not None:
        validated_rules(rules)
    settings = engine_settings(vllm_config)
    if not settings:
        return
    config = validated(settings)
    model = vllm_config.model_config
    layers = num_layers(vllm_config)
    if not layers and config.policy != "full":
        kinds = ", ".join(other_layer_kinds(model.hf_text_config)) or "no full attention"
        raise ValueError(
            f"kv policy '{config.policy}' has no layer to compress: kvcomp compresses full-attention layers and "
            f"every layer of this model is {kinds}; serve it with --kv-policy full"
        )
    config.check_model(layers, model.max_model_len)
    vllm_config.additional_config[CONFIG_KEY] = config.model_dump(exclude_unset=True)
    if config.policy == "full":
        logger.info("kvcomp: policy full (no compression; vLLM's own KV cache path)")
        return
    check_features(config.policy, vllm_config, KVCOMP_SCHEDULERS)
    check_device(config, vllm_config)
    # kvcomp's scheduler (chunks stop at compression points, failed requests finish as errors), the async
    # one where vLLM settled on async scheduling above; vLLM's engine core builds it from this name.
    set_scheduler_cls(vllm_config, scheduler_class(async_scheduling(vllm_config)))
    if platform_name() == "cpu":
        check_cpu_packing(vllm_config)
    if vllm_config.cache_config.enable_prefix_caching:  # stays on: protected prefixes stay raw (prefix_cache)
        logger.info("kvcomp: prefix caching on: each request keeps its cache hits (cache_prefix: %s) raw and "
                    "compresses its own tokens", config.cache_prefix)
    # Async scheduling stays as vLLM set it (on by default on CUDA): the next step is scheduled while the
    # GPU runs this one, and blocks freed by a compaction are reused only by later kernels on the stream.
    policy = make_policy(config, layers)
    why = mismatch(model.model, config, layers) if config.policy == "pod" else None
    if why:
        logger.warning("kvcomp: %s", why)
    n = model.max_model_len
    budgets = [policy.layout.layer_budget(layer, n) for layer in range(layers)]
    logger.info("kvcomp: %s; tokens kept per layer for a %d-token prompt: %s", config.describe(), n, budgets)
    compressed = model_layers(vllm_config)
    if compressed.hybrid:
        logger.info("kvcomp: hybrid model: the policy's layers are the full-attention layers %s; the other %d "
                    "layers stay under vLLM's own KV management", list(compressed.layers),
                    compressed.num_model_layers - compressed.count)


def check_device(config: KVPolicyConfig, vllm_config) -> None:
    """Compression runs on vLLM's CPU attention and, on CUDA, FlashAttention with vLLM's V1 runner.

    CUDA graphs stay on, full ones included: decode-only steps of compacted caches need nothing from
    kvcomp inside the graph but buffers it fills before each step (shifted `seq_lens`, and PoD's member
    decode inputs, `member_decode`).
    """
    device = platform_name()
    if device == "cpu":
        return
    if device != "cuda":
        raise ValueError(f"kv policy '{config.policy}' has no {device} backend (policy 'full' serves on any device)")
    if vllm_config.use_v2_model_runner:  # the hooks live in the V1 runner
        raise ValueError(f"kv policy '{config.policy}' needs vLLM's V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0")
    if config.policy == "pod" and mixed_full_cudagraphs(vllm_config):
        raise ValueError("kv policy 'pod' decodes member layers in full CUDA graphs of decode steps only: serve with "
                         "cudagraph_mode FULL_AND_PIECEWISE (the default) or FULL_DECODE_ONLY, not FULL")


def check_cpu_packing(vllm_config) -> None:
    """Learn vLLM's CPU KV packing for this model now, so a packing kvcomp cannot address stops start-up
    (with the dtype to serve instead), never a request."""
    model, cache = vllm_config.model_config, vllm_config.cache_config
    head_dim = model.get_head_size()
    isa = cpu_attention_isa(model.dtype, cache.block_size, head_dim, cache.cache_dtype)
    cpu_block_tilings(isa, model.dtype, cache.block_size, head_dim)


_SERVE_CMD: list = []  # vLLM's own `serve` command, which `serve_cmd` wraps


def serve_cmd(args):
    """`vllm serve`, printing kvcomp's settings errors as one line. A module-level function, since vLLM
    pickles it with the parsed args to the API server processes it spawns (`--data-parallel-size`,
    `--api-server-count`)."""
    try:
        fold_kv_args(args)
        return _SERVE_CMD[-1](args)
    except KVSettingsError as err:
        raise SystemExit(f"vllm serve: error: {err}") from None


def fold_kv_args(args) -> None:
    """Write the `--kv-*` flags into the parsed args' `additional_config` and list kvcomp's middlewares.

    API server processes that vLLM spawns (data parallelism, `--api-server-count`) build their engine
    args from these args before the plugin is loaded there, so `from_cli_args`'s hook misses them.
    """
    from .server_http import add_middleware

    add_middleware(args)
    settings = settings_from_args(args)
    if settings is not None and hasattr(args, "additional_config"):
        extra = args.additional_config or {}
        args.additional_config = {**extra, CONFIG_KEY: settings, OVERRIDES_KEY: override_rules_from_args(args)}


def _serve_cmd(original):
    _SERVE_CMD.append(original)
    return serve_cmd


def _add_cli_args(original):
    def add_cli_args(parser):
        parser = original(parser)
        add_kv_arguments(parser)
        return parser

    return add_cli_args


def _from_cli_args(original):
    def from_cli_args(cls, args):
        from .server_http import add_middleware

        add_middleware(args)
        engine_args = original(cls, args)
        settings, rules = settings_from_args(args), override_rules_from_args(args)
        if settings is not None:
            extra = engine_args.additional_config or {}
            engine_args.additional_config = {**extra, CONFIG_KEY: settings, OVERRIDES_KEY: rules}
        return engine_args

    return from_cli_args


def _create_engine_config(original):
    def create_engine_config(self, *args, **kwargs):
        vllm_config = original(self, *args, **kwargs)
        try:
            check_engine_config(vllm_config)
        except ValueError as err:  # kvcomp's own checks only: vLLM's ran above
            raise KVSettingsError(str(err)) from None
        return vllm_config

    return create_engine_config


def install_engine_args_hooks() -> None:
    """Add the flags to vLLM's parser and the check to engine start-up, whose errors `vllm serve`
    prints as one line (idempotent)."""
    serve = serve_subcommand()
    if serve is not None:
        patch(serve, "cmd", _serve_cmd)
    patch(EngineArgs, "add_cli_args", _add_cli_args)
    patch(EngineArgs, "from_cli_args", _from_cli_args)
    patch(EngineArgs, "create_engine_config", _create_engine_config)
