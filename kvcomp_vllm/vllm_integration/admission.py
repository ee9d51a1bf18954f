"""Per-request kvcomp settings, checked in the front end before a request reaches the engine.

A request may carry its own settings in `SamplingParams.extra_args` (`{"kvcomp": {...}}` or flat
`kv_<field>` keys; `server_http` puts HTTP body fields there). They are validated against the server's policy and model where vLLM validates
every request, so a bad override fails that request alone with a clear message, and no request is
served with other settings than it asked for.
"""

from __future__ import annotations

from pydantic import ValidationError

from ..config import request_config
from ..policies import incompatibility, make_policy
from .compat import InputProcessor, patch
from .engine_args import settings_error
from .settings import request_overrides, server_policy


def check_request(vllm_config, sampling_params) -> None:
    """Raise ValueError, naming the field, where a request's kvcomp settings cannot be served."""
    overrides = request_overrides(sampling_params)
    if not overrides:
        return
    server = server_policy(vllm_config)
    try:
        config = request_config(server.config, overrides)
    except ValidationError as err:
        raise ValueError(f"invalid kvcomp settings in request: {settings_error(err)}") from None
    config.check_model(server.num_layers, vllm_config.model_config.max_model_len)
    if server.name == "full":
        if config.policy != "full":
            raise ValueError("kvcomp: this server runs without KV compression; start it with --kv-policy to allow per-request policies")
        return
    reason = incompatibility(server, make_policy(config, server.num_layers))
    if reason:
        raise ValueError(f"kvcomp: {reason}")


def _validate_params(original):
    def validate_params(self, params, *args, **kwargs):
        result = original(self, params, *args, **kwargs)
        check_request(self.vllm_config, params)
        return result

    return validate_params


def install_admission_hooks() -> None:
    """Check per-request settings where vLLM validates every request (idempotent)."""
    patch(InputProcessor, "_validate_params", _validate_params)
