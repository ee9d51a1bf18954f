"""The Docker images without a Docker engine: the entrypoint (env vars -> `vllm serve` args, run with a
fake `vllm` that prints its argv), the health check against a local server, and the Dockerfile's text."""

from __future__ import annotations

import argparse
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def engine_args():
    """kvcomp's `--kv-*` flag definitions (importing them loads vLLM, so only when needed)."""
    from kvcomp_vllm.vllm_integration import engine_args

    return engine_args


def entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the entrypoint with `vllm` faked by a script that prints one argument per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "vllm"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "KVCOMP_HOME": str(ROOT)}
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env={**base, **env}, capture_output=True, text=True, check=False
    )


def argv(tmp_path: Path, *args: str, **env: str) -> list[str]:
    proc = entrypoint(tmp_path, *args, **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_entrypoint_turns_env_into_serve_args(tmp_path):
    got = argv(tmp_path, MODEL="org/model", KV_POLICY="pyramid", KV_BUDGET="0.1")
    assert got == [
        "serve",
        "org/model",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--kv-budget",
        "0.1",
        "--kv-policy",
        "pyramid",
    ]  # KV_* in name order; no --enforce-eager: CUDA graphs stay on by default


def test_entrypoint_covers_every_kv_flag_of_the_plugin(tmp_path, engine_args):
    flags = [*engine_args.FLAGS, "--kv-policy", "--kv-overrides", "--kv-override-policies", "--kv-override-max-budget"]
    env = {
        "KV_" + flag.removeprefix("--kv-").replace("-", "_").upper(): f"v{i}" for i, flag in enumerate(flags)
    }
    got = argv(tmp_path, MODEL="m", **env)
    for i, flag in enumerate(flags):
        assert got[got.index(flag) + 1] == f"v{i}", flag


def test_entrypoint_args_parse_with_the_plugins_parser(tmp_path, engine_args):
    parser = argparse.ArgumentParser()
    engine_args.add_kv_arguments(parser)
    for pool_size in ({"KV_POOL_SIZE": "5"}, {"KV_KERNEL": "5"}):  # KV_KERNEL: --kv-kernel, its deprecated name
        got = argv(tmp_path, MODEL="m", KV_CONFIG="snapkv-2k", KV_BUDGET="512", **pool_size)
        known, _ = parser.parse_known_args(got[2:])
        assert engine_args.settings_from_args(known) == {
            "policy": "snapkv",
            "budget": 512,
            "window": 32,
            "pool_size": 5,
            "pooling": "avg",
        }


def test_kv_config_takes_a_preset_name_or_a_path(tmp_path):
    by_name = argv(tmp_path, MODEL="m", KV_CONFIG="pod-35pct")
    path = Path(by_name[by_name.index("--kv-config") + 1])
    assert path == ROOT / "configs" / "pod-35pct.yaml" and path.is_file()
    by_path = argv(tmp_path, MODEL="m", KV_CONFIG="/data/mine.yaml")
    assert by_path[by_path.index("--kv-config") + 1] == "/data/mine.yaml"


def test_model_argument_comes_first_and_extra_args_pass_through_last(tmp_path):
    got = argv(tmp_path, "org/model", "--max-model-len", "4096", PORT="9000", KV_POLICY="snapkv")
    assert got[:2] == ["serve", "org/model"]
    assert got[got.index("--port") + 1] == "9000"
    assert got[-2:] == ["--max-model-len", "4096"] and got.index("--kv-policy") < got.index("--max-model-len")


def test_enforce_eager_is_opt_in_and_the_callers_flag_wins(tmp_path):
    for default in (argv(tmp_path, MODEL="m", KV_POLICY="snapkv"), argv(tmp_path, MODEL="m", ENFORCE_EAGER="0")):
        assert "--enforce-eager" not in default and "--no-enforce-eager" not in default
    assert argv(tmp_path, MODEL="m", KV_POLICY="pod", ENFORCE_EAGER="1").count("--enforce-eager") == 1
    assert argv(tmp_path, "m", "--enforce-eager").count("--enforce-eager") == 1
    both = argv(tmp_path, "m", "--enforce-eager", ENFORCE_EAGER="1")
    assert both.count("--enforce-eager") == 1 and both[-1] == "--enforce-eager"
    got = argv(tmp_path, "m", "--no-enforce-eager", ENFORCE_EAGER="1")
    assert got.count("--no-enforce-eager") == 1 and "--enforce-eager" not in got


def test_entrypoint_without_a_model_stops_with_a_message(tmp_path):
    proc = entrypoint(tmp_path, "--kv-policy", "snapkv")
    assert proc.returncode == 2 and "set MODEL" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("status, code", [(200, 0), (503, 1)])
def test_healthcheck_follows_the_health_endpoint(status, code):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "PORT": str(server.server_port)}
        proc = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, check=False)
        assert proc.returncode == code
    finally:
        server.shutdown()


def test_healthcheck_fails_when_nothing_listens():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()
    proc = subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**os.environ, "PORT": str(port)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "unhealthy" in proc.stderr


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments) in order; continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            stages[rest.split(" AS ")[-1].strip()] = []
        stages[list(stages)[-1]].append((word.upper(), rest.strip()))
    return stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(part.split("=", 1) for word, rest in stage if word == "ENV" for part in shlex.split(rest))


def test_dockerfile_has_a_gpu_default_and_a_cpu_target():
    stages = dockerfile_stages()
    assert list(stages)[1:] == ["cpu", "gpu"]  # the last stage is what a plain `docker build` gives
    args = dict(rest.split("=", 1) for word, rest in stages[""] if word == "ARG")
    assert args["VLLM_IMAGE"] == "vllm/vllm-openai:v0.26.0" and args["CPU_BASE"] == "python:3.11-slim"
    assert stages["gpu"][0] == ("FROM", "${VLLM_IMAGE} AS gpu")
    assert stages["cpu"][0] == ("FROM", "${CPU_BASE} AS cpu")
    assert env_of(stages["gpu"])["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    cpu_runs = " ".join(rest for word, rest in stages["cpu"] if word == "RUN")
    assert "download.pytorch.org/whl/cpu" in cpu_runs and "make install" in cpu_runs


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_each_image_runs_as_a_numeric_non_root_user_with_a_health_check(name):
    stage = dockerfile_stages()[name]
    words = [word for word, _ in stage]
    user = [rest for word, rest in stage if word == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)
    assert words.index("USER") > max(
        i for i, w in enumerate(words) if w == "RUN"
    )  # nothing runs as root after
    health = dict(stage)["HEALTHCHECK"]
    assert "/opt/kvcomp/docker/healthcheck.py" in health and "--start-period=" in health
    assert dict(stage)["ENTRYPOINT"] == '["/opt/kvcomp/docker/entrypoint.sh"]'
    assert os.access(ENTRYPOINT, os.X_OK)
    assert env_of(stage)["PORT"] == dict(stage)["EXPOSE"] == "8000"


def test_no_secret_is_baked_into_the_images():
    secretish = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
    for name, stage in dockerfile_stages().items():
        names = list(env_of(stage)) + [rest.split("=")[0] for word, rest in stage if word == "ARG"]
        assert not [n for n in names if secretish.search(n)], name
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "**/.env", "**/.netrc"):
        assert pattern in ignored  # `COPY . .` must not take venvs or credential files along
