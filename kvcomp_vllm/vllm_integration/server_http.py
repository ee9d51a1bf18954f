"""HTTP glue for `vllm serve`: `kv_*` body fields reach the request, the response says what was applied.

A completion or chat request may carry `kv_policy`, `kv_budget`, ... as top-level body fields (the
OpenAI SDK's `extra_body`) or inside `vllm_xargs`. They become flat `kv_<field>` keys of the
request's sampling params and are checked there, so a bad one is answered 400 before it reaches the
engine. Every completion and chat response carries a `kvcomp-policy` header with the settings the
request runs with. A scrape of `/metrics` first pulls the workers' compaction counts and timings.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from ..config import request_config
from .admission import check_request
from .compat import engine_client_of, openai_request_classes, patch
from .metrics import pull_worker_reports
from .settings import FLAT_PREFIX, engine_policy, request_overrides, served_config, server_policy

HEADER = b"kvcomp-policy"
PATHS = ("/v1/completions", "/v1/chat/completions")
MIDDLEWARES = (f"{__name__}.PolicyHeaderMiddleware", f"{__name__}.WorkerReportsMiddleware")


def _to_sampling_params(original):
    def to_sampling_params(self, *args, **kwargs):
        params = original(self, *args, **kwargs)
        fields = {k: v for k, v in (self.model_extra or {}).items() if k.startswith(FLAT_PREFIX)}
        if fields:
            params.extra_args = {**(params.extra_args or {}), **fields}
        if served_config() is not None:  # raised here, the server answers 400 rather than 500
            check_request(served_config(), params)
        return params

    return to_sampling_params


def applied_policy(body: bytes) -> str | None:
    """The settings a completion/chat request body runs with, or None where it is not servable."""
    try:
        data = json.loads(body)
        extra = {**(data.get("vllm_xargs") or {}), **{k: v for k, v in data.items() if k.startswith(FLAT_PREFIX)}}
        server = server_policy(served_config()).config
        return request_config(server, request_overrides(SimpleNamespace(extra_args=extra))).describe()
    except (ValueError, TypeError, AttributeError):
        return None


class PolicyHeaderMiddleware:
    """ASGI middleware adding the `kvcomp-policy` header to completion and chat responses."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in PATHS or served_config() is None:
            return await self.app(scope, receive, send)
        messages = [await receive()]
        while messages[-1].get("more_body"):
            messages.append(await receive())
        applied = applied_policy(b"".join(m.get("body", b"") for m in messages))
        pending = iter(messages)

        async def replay():
            return next(pending, None) or await receive()

        async def send_with_header(message):
            if message["type"] == "http.response.start" and applied:
                message = {**message, "headers": [*message.get("headers", []), (HEADER, applied.encode())]}
            await send(message)

        await self.app(scope, replay, send_with_header)


class WorkerReportsMiddleware:
    """ASGI middleware that refreshes the workers' numbers (compaction counts, timings) before `/metrics` answers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/") == "/metrics" and engine_policy(served_config()):
            client = engine_client_of(scope)
            if client is not None:
                await pull_worker_reports(client)
        await self.app(scope, receive, send)


def add_middleware(args) -> None:
    """Have `vllm serve` install kvcomp's middlewares (its parsed args list middlewares to load)."""
    if hasattr(args, "middleware"):
        args.middleware = [*args.middleware, *(m for m in MIDDLEWARES if m not in args.middleware)]


def install_http_hooks() -> None:
    """Carry `kv_*` body fields into sampling params (idempotent)."""
    for request_class in openai_request_classes():
        patch(request_class, "to_sampling_params", _to_sampling_params)
