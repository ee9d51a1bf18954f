"""Start `vllm serve` with the plugin on a local model, for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
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
    """The `vllm` console script of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("vllm"))]


@contextmanager
def serve(model: str | Path, *args: str, timeout: float = 240.0, log: Path | None = None, env: dict | None = None):
    """Run `vllm serve MODEL ARGS` on a free loopback port; yields the base URL, stops it after.

    `env` adds to this process's environment for the server.
    """
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
    cmd = [*vllm_command(), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
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
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


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
