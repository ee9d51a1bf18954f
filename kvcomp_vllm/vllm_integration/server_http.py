"""HTTP glue for `vllm serve`: `kv_*` body fields reach the request, the response says what was applied.

A completion or chat request may carry `kv_policy`, `kv_budget`, ... as top-level body fields (the
OpenAI SDK's `extra_body`) or inside `vllm_xargs`. They become flat `kv_<field>` keys of the
request's sampling params and are checked there, so a bad one is answered 400 before it reaches the
engine. A response whose request was admitted carries a `kvcomp-policy` header with the settings it
runs with, as resolved from its sampling params. A route that does not carry `kv_*` fields into
sampling params (`/v1/responses`, `/v1/messages`, ...) answers 400 to a body holding them, rather than
serving the request with other settings than it asked for. A scrape of `/metrics` first pulls the
workers' compaction counts and timings (and, where vLLM serves its multiprocess registry, appends them).
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar

from .admission import check_request
from .compat import engine_client_of, openai_request_classes, patch
from .metrics import pull_worker_reports, worker_metrics_text
from .settings import FLAT_PREFIX, engine_policy, served_config

HEADER = b"kvcomp-policy"
APPLYING_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/chat/completions/batch", "/invocations")
MIDDLEWARES = (f"{__name__}.PolicyHeaderMiddleware", f"{__name__}.WorkerReportsMiddleware")

# Settings of the requests admitted while serving one HTTP request (a batch route admits several).
_APPLIED: ContextVar[list[str] | None] = ContextVar("kvcomp_applied", default=None)


def _to_sampling_params(original):
    def to_sampling_params(self, *args, **kwargs):
        params = original(self, *args, **kwargs)
        fields = {k: v for k, v in (self.model_extra or {}).items() if k.startswith(FLAT_PREFIX)}
        if fields:
            params.extra_args = {**(params.extra_args or {}), **fields}
        if served_config() is not None:  # raised here, the server answers 400 rather than 500
            config = check_request(served_config(), params)
            applied = _APPLIED.get()
            if applied is not None:
                applied.append(config.describe())
        return params

    return to_sampling_params


def carries_kv_fields(body: bytes) -> bool:
    """Whether a JSON body holds `kv_*` fields at its top level or in `vllm_xargs`; False for any body
    that is not a JSON object (vLLM's own parser answers those), however deeply nested. Bodies without
    `kv_` or a `\\u` escape (which could spell it) are not parsed: vLLM parses every body again."""
    if b"kv_" not in body and b"\\u" not in body:
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    xargs = data.get("vllm_xargs")
    keys = [*data, *(xargs if isinstance(xargs, dict) else ())]
    return any(isinstance(k, str) and k.startswith(FLAT_PREFIX) for k in keys)


def _bad_request(message: str) -> tuple[dict, dict]:
    """ASGI start and body messages of a 400 shaped like vLLM's error responses."""
    body = json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
    start = {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
    return start, {"type": "http.response.body", "body": body.encode()}


class PolicyHeaderMiddleware:
    """ASGI middleware: the `kvcomp-policy` header on admitted requests' responses, and a 400 for
    `kv_*` fields sent to a route that would ignore them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or served_config() is None:
            return await self.app(scope, receive, send)
        messages = [await receive()]
        while messages[-1].get("more_body"):
            messages.append(await receive())
        path = scope["path"].rstrip("/")
        has_fields = carries_kv_fields(b"".join(m.get("body", b"") for m in messages))
        ignored = (
            f"kvcomp: {path} does not apply kv_* fields; send them to /v1/completions or /v1/chat/completions"
        )
        if has_fields and path not in APPLYING_PATHS:
            for message in _bad_request(ignored):
                await send(message)
            return
        pending = iter(messages)
        applied: list[str] = []
        token = _APPLIED.set(applied)
        swallow = False

        async def replay():
            return next(pending, None) or await receive()

        async def send_with_header(message):
            nonlocal swallow
            if message["type"] == "http.response.start":
                if has_fields and not applied and message["status"] < 300:  # e.g. /invocations routed to pooling
                    swallow = True
                    for part in _bad_request(ignored):
                        await send(part)
                    return
                if applied and message["status"] < 400:  # admitted, then refused (e.g. its footprint): no header
                    header = "; ".join(dict.fromkeys(applied))
                    message = {**message, "headers": [*message.get("headers", []), (HEADER, header.encode())]}
            if not swallow:
                await send(message)

        try:
            await self.app(scope, replay, send_with_header)
        finally:
            _APPLIED.reset(token)


class WorkerReportsMiddleware:
    """ASGI middleware that refreshes the workers' numbers (compaction counts, timings) before `/metrics` answers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        metrics_path = scope["type"] == "http" and scope["path"].rstrip("/") == "/metrics"
        if not metrics_path or not engine_policy(served_config()):
            return await self.app(scope, receive, send)
        client = engine_client_of(scope)
        if client is not None:
            await pull_worker_reports(client)
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # vLLM serves the registry kvcomp's collector is in
            return await self.app(scope, receive, send)
        # Several API servers (data parallelism): vLLM answers from a fresh multiprocess registry, which
        # reads only file-backed metrics; the workers' families follow its text, uncompressed.
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}
        start, body = {}, []

        async def append_workers(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and start.get("status") == 200:
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    content = b"".join(body) + worker_metrics_text()
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    length = (b"content-length", str(len(content)).encode())
                    await send({**start, "headers": [*headers, length]})
                    await send({"type": "http.response.body", "body": content})
            else:
                if start:
                    await send(start)
                    start.clear()
                await send(message)

        await self.app(scope, receive, append_workers)


def add_middleware(args) -> None:
    """Have `vllm serve` install kvcomp's middlewares (its parsed args list middlewares to load)."""
    if hasattr(args, "middleware"):
        args.middleware = [*args.middleware, *(m for m in MIDDLEWARES if m not in args.middleware)]


def install_http_hooks() -> None:
    """Carry `kv_*` body fields into sampling params (idempotent)."""
    for request_class in openai_request_classes():
        patch(request_class, "to_sampling_params", _to_sampling_params)
