"""Start `vllm serve` with the plugin on a local model, for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path | None, lines: int = 25) -> str:
    """The last lines of a server log, indented, with where the whole log is."""
    if log is None or not Path(log).exists():
        return ""
    tail = Path(log).read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(["", f"last lines of {log}:", *(f"  {line}" for line in tail)])


def vllm_command() -> list[str]:
    """The `vllm` console script of this interpreter's environment, or vLLM's CLI module where vLLM was
    installed without scripts (`pip install --target`, as on the GPU device)."""
    script = Path(sys.executable).with_name("vllm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vllm.entrypoints.cli.main"]


@dataclass
class Server:
    """A running `vllm serve`: its base URL, the command it was started with and its process."""

    url: str
    command: list[str]
    process: subprocess.Popen


@contextmanager
def server(model: str | Path, *args: str, timeout: float = 240.0, log: Path | None = None, env: dict | None = None):
    """Run `vllm serve MODEL ARGS` on a free loopback port in its own process group; yields a `Server`
    once /health answers, and stops the whole group after (engine core and workers included).

    `env` adds to this process's environment for the server; a value of None removes that variable.
    """
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    cmd = [*vllm_command(), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode} before it was healthy{log_tail(log)}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vllm serve not healthy after {timeout:.0f} s{log_tail(log)}")
            time.sleep(0.5)
        yield Server(url, cmd, proc)
    finally:
        stop_group(proc)
        if log:
            out.close()


@contextmanager
def serve(model: str | Path, *args: str, timeout: float = 240.0, log: Path | None = None, env: dict | None = None):
    """Run `vllm serve MODEL ARGS` on a free loopback port; yields the base URL, stops it after.

    `env` adds to this process's environment for the server.
    """
    with server(model, *args, timeout=timeout, log=log, env=env) as running:
        yield running.url


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group `proc` leads, wait up to `grace` seconds for every member, then SIGKILL
    what is left: no engine core or worker outlives its server."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id

    def signal_group(sig) -> bool:
        try:
            os.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False  # no member left

    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so it no longer counts as a member
        if not signal_group(0):
            return
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    proc.wait()


def metric_samples(url: str) -> dict[str, float]:
    """The server's /metrics samples, keyed by name and labels as written."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
