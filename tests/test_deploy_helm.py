"""The Helm chart (deploy/helm/kvcomp-vllm), rendered by the pinned Helm that `make test` fetches.

Checks the rendered manifests (serve args, secret references, probes and ports, security) and that
the chart's template-time rules accept and reject kvcomp settings exactly as KVPolicyConfig does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvcomp_vllm.config import POLICY_NAMES

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "kvcomp-vllm"


def find_helm() -> str | None:
    """$HELM, the venv's helm (where `make test` puts it), or one on PATH."""
    for candidate in (os.environ.get("HELM"), Path(sys.executable).with_name("helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


HELM = find_helm()
pytestmark = pytest.mark.skipif(
    HELM is None, reason="no helm: `make test` fetches it (scripts/install_helm.py)"
)


class HelmError(Exception):
    """helm refused the values; the message is its `Error:` text."""


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)


def render(tmp_path: Path, values: dict | None = None) -> dict[str, dict]:
    """`helm template` with these values; manifests by kind."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    proc = helm("template", "rel", str(CHART), "-f", str(values_file))
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("level=")]  # helm's log
        error = next((i for i, line in enumerate(lines) if line.startswith("Error:")), 0)
        raise HelmError("\n".join(lines[error:]))
    return {doc["kind"]: doc for doc in yaml.safe_load_all(proc.stdout) if doc}


def container(manifests: dict) -> dict:
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def env(manifests: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(manifests)["env"]}


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_chart_lints():
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_serve_args_carry_the_model_and_the_policy(tmp_path):
    m = render(
        tmp_path,
        {
            "model": "org/m",
            "kvPolicy": "pyramid",
            "kvBudget": 0.1,
            "maxModelLen": 32768,
            "kvParams": {"window": 16, "beta": 10.0, "pooling": "max"},
        },
    )
    args = container(m)["args"]
    assert args[0] == "org/m"  # the entrypoint needs the model first
    assert flag(args, "--kv-policy") == "pyramid" and flag(args, "--kv-budget") == "0.1"
    assert flag(args, "--kv-window") == "16" and flag(args, "--kv-beta") == "10"
    assert flag(args, "--kv-pooling") == "max" and flag(args, "--max-model-len") == "32768"
    assert env(m)["VLLM_USE_V2_MODEL_RUNNER"]["value"] == "0"  # kvcomp's CUDA hooks are in the V1 runner
    assert "--enforce-eager" not in args and "--no-enforce-eager" not in args  # CUDA graphs stay on
    assert container(m)["image"] == "kvcomp-vllm:0.1.0"


def test_budgets_keep_tokens_and_ratios_apart(tmp_path):
    def budget(value):
        return flag(
            container(render(tmp_path, {"kvPolicy": "snapkv", "kvBudget": value}))["args"], "--kv-budget"
        )

    assert budget(2048) == "2048" and budget(0.25) == "0.25" and budget("1.0") == "1.0"
    assert budget(1000000) == "1000000"  # not 1e+06


def test_preset_is_served_from_a_configmap_the_chart_checked(tmp_path):
    m = render(
        tmp_path,
        {"kvPolicy": "", "kvBudget": None, "kvPreset": "windowkv-12pct", "kvParams": {"groupSize": 4}},
    )
    args = container(m)["args"]
    assert (
        flag(args, "--kv-config") == "/etc/kvcomp/windowkv-12pct.yaml"
        and flag(args, "--kv-group-size") == "4"
    )
    assert "--kv-policy" not in args and "--kv-budget" not in args
    assert (
        m["ConfigMap"]["data"]["windowkv-12pct.yaml"]
        == (ROOT / "configs" / "windowkv-12pct.yaml").read_text()
    )
    mount = {v["name"]: v for v in container(m)["volumeMounts"]}["kv-preset"]
    volume = {v["name"]: v for v in m["Deployment"]["spec"]["template"]["spec"]["volumes"]}["kv-preset"]
    assert (
        mount["mountPath"] == "/etc/kvcomp"
        and volume["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    )
    assert "checksum/kv-preset" in m["Deployment"]["spec"]["template"]["metadata"]["annotations"]


def test_api_key_and_hf_token_are_secret_references_never_values(tmp_path):
    m = render(
        tmp_path,
        {
            "apiKey": {"existingSecret": "llm-auth", "key": "token"},
            "hfToken": {"existingSecret": "hf", "key": "hf-token"},
        },
    )
    assert env(m)["VLLM_API_KEY"] == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "llm-auth", "key": "token"}},
    }
    assert env(m)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "hf-token"}
    assert "Secret" not in m and not any(a.startswith("--api-key") for a in container(m)["args"])
    assert "VLLM_API_KEY" not in env(render(tmp_path))  # no secret named: no auth, and no empty reference


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"apiKey": {"existingSecret": "s", "value": "hunter2"}},
            "additional properties 'value' not allowed",
        ),
        (
            {"extraArgs": ["--api-key=hunter2"]},
            "extraArgs: --api-key is set by the chart: use apiKey.existingSecret",
        ),
        (
            {"extraEnv": [{"name": "VLLM_API_KEY", "value": "hunter2"}]},
            "extraEnv: VLLM_API_KEY must come from a Secret",
        ),
        ({"apiKey": {"existingSecret": "s", "key": ""}}, 'apiKey.key: name the key of Secret "s"'),
    ],
)
def test_secrets_in_the_clear_are_refused(tmp_path, values, message):
    with pytest.raises(HelmError, match=re.escape(message)):
        render(tmp_path, values)


def test_probes_ports_and_service_line_up(tmp_path):
    m = render(
        tmp_path, {"containerPort": 9000, "service": {"port": 80}, "serviceMonitor": {"enabled": True}}
    )
    c = container(m)
    (port,) = c["ports"]
    assert port == {"name": "http", "containerPort": 9000, "protocol": "TCP"}
    assert env(m)["PORT"]["value"] == "9000"  # the entrypoint's --port and the image's health check
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    (service_port,) = m["Service"]["spec"]["ports"]
    assert service_port["port"] == 80 and service_port["targetPort"] == port["name"]
    pod_labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert m["Service"]["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = m["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
    assert (
        m["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items()
        <= m["Service"]["metadata"]["labels"].items()
    )
    assert "ServiceMonitor" not in render(tmp_path)  # optional, off by default


def test_pod_runs_as_the_images_user_on_a_read_only_root(tmp_path):
    m = render(tmp_path)
    pod = m["Deployment"]["spec"]["template"]["spec"]
    uid, gid = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE).groups()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    sc = container(m)["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )
    home = re.search(r"(?<![A-Z_])HOME=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    mounts = {v["mountPath"] for v in container(m)["volumeMounts"]}
    assert {home, "/tmp", "/dev/shm"} <= mounts  # every place the server writes is a volume
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False


def test_gpus_tensor_parallelism_and_scheduling(tmp_path):
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    m = render(
        tmp_path,
        {
            "gpu": {"count": 4},
            "tensorParallelSize": 4,
            "nodeSelector": {"gpu": "h100"},
            "tolerations": tolerations,
            "cache": {"existingClaim": "models"},
        },
    )
    pod = m["Deployment"]["spec"]["template"]["spec"]
    assert flag(container(m)["args"], "--tensor-parallel-size") == "4"
    assert container(m)["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["tolerations"] == tolerations
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == "models"
    cpu = render(tmp_path, {"gpu": {"count": 0}})
    assert "nvidia.com/gpu" not in container(cpu)["resources"].get("limits", {})


def test_gpus_default_to_one_per_worker_with_shared_memory_for_nccl(tmp_path):
    tp = render(tmp_path, {"tensorParallelSize": 2})
    assert container(tp)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "--data-parallel-size" not in container(tp)["args"]
    pod = tp["Deployment"]["spec"]["template"]["spec"]
    shm = {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(tp)["volumeMounts"]
    dp = render(tmp_path, {"tensorParallelSize": 2, "dataParallelSize": 2})
    assert flag(container(dp)["args"], "--data-parallel-size") == "2"
    assert container(dp)["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container(render(tmp_path, {"gpu": {"count": 8}, "tensorParallelSize": 2}))["resources"]["limits"]["nvidia.com/gpu"] == 8


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"gpu": {"count": 2}, "tensorParallelSize": 4},
            "tensorParallelSize: 4 workers need 4 GPUs per pod, but gpu.count is 2",
        ),
        (
            {"gpu": {"count": 2}, "tensorParallelSize": 2, "dataParallelSize": 2},
            "tensorParallelSize x dataParallelSize: 4 workers need 4 GPUs per pod, but gpu.count is 2",
        ),
        ({"dataParallelSize": 0}, "dataParallelSize: must be an integer >= 1, got 0"),
        ({"extraArgs": ["--data-parallel-size", "2"]}, "extraArgs: --data-parallel-size is set by the chart: use dataParallelSize"),
        (
            {"extraArgs": ["--pipeline-parallel-size=2"]},
            "extraArgs: --pipeline-parallel-size=2: kvcomp refuses pipeline parallelism",
        ),
        ({"extraArgs": ["-pp", "2"]}, "extraArgs: -pp: kvcomp refuses pipeline parallelism"),
        ({"tensorParallelSize": 0}, "tensorParallelSize: must be an integer >= 1, got 0"),
        ({"extraArgs": ["--enforce-eager"]}, "extraArgs: --enforce-eager is set by the chart: use enforceEager"),
        ({"model": ""}, "model: set the model to serve"),
        ({"extraArgs": ["--kv-budget", "9"]}, "extraArgs: --kv-budget is set by the chart, which checks it"),
        ({"extraArgs": ["--port=1"]}, "extraArgs: --port is set by the chart: use containerPort"),
        ({"extraArgs": ["-tp", "8"]}, "extraArgs: -tp is set by the chart: use tensorParallelSize"),
        (
            {"kvPreset": "nope"},
            'kvPreset: no preset "nope" (presets: pod-35pct, pyramid-10pct, snapkv-10pct-shared-prompt, snapkv-2k, windowkv-12pct)',
        ),
        ({"kvPreset": "pod-35pct"}, "kvPolicy, kvBudget and kvParams override preset pod-35pct"),
        ({"maxModelLen": 1024}, "budget: 2048 tokens is larger than the model's context (1024 tokens)"),
        ({"kvParams": {"windw": 8}}, "additional properties 'windw' not allowed"),
    ],
)
def test_values_vllm_would_refuse_fail_with_a_clear_message(tmp_path, values, message):
    with pytest.raises(HelmError, match=re.escape(message)):
        render(tmp_path, values)


def test_what_vllm_accepts_renders(tmp_path):
    render(tmp_path, {"enforceEager": False, "kvPolicy": "full", "kvBudget": None})
    render(tmp_path, {"enforceEager": False, "gpu": {"count": 0}})  # the CPU image
    render(tmp_path, {"kvPolicy": "", "kvBudget": None, "kvPreset": "pod-35pct"})


@pytest.mark.parametrize("policy, budget", [("snapkv", 0.25), ("pod", None)])
def test_compressing_policies_run_with_cuda_graphs_unless_enforce_eager(tmp_path, policy, budget):
    values = {"kvPolicy": policy, "kvBudget": budget, "gpu": {"count": 1}}
    graphs = container(render(tmp_path, values))["args"]  # no template-time rule demands eager mode
    assert "--enforce-eager" not in graphs and "--no-enforce-eager" not in graphs
    eager = container(render(tmp_path, {**values, "enforceEager": True}))["args"]
    assert eager.count("--enforce-eager") == 1 and "--no-enforce-eager" not in eager
    assert eager.index("--enforce-eager") > eager.index("--kv-policy")


# ---- the chart's kvcomp rules against KVPolicyConfig ------------------------------------------------

PARAMS = {
    "window": 16,
    "pool_size": 5,
    "pooling": "max",
    "beta": 4.0,
    "tiers": 2,
    "sink": 2,
    "recent": 64,
    "group_size": 2,
    "window_size": 16,
    "window_scoring": "max",
    "concentration_threshold": 0.7,
    "prefill_chunk": 512,
    "cache_prefix": 512,
}
BUDGETS = {"streaming": 256, "snapkv": 256, "pyramid": 0.2, "windowkv": 0.5, "windowkv-per-head": 0.5}
# Each case: KVPolicyConfig fields, plus "preset" for --kv-config. One fault at most per case.
CASES = [
    *({"policy": p, **({"budget": BUDGETS[p]} if p in BUDGETS else {})} for p in POLICY_NAMES),
    *(
        {"policy": p, "budget": BUDGETS.get(p, 256), name: v}
        for p in POLICY_NAMES
        for name, v in PARAMS.items()
    ),
    {"policy": "snapkv"},
    {"policy": "bogus"},
    {"window": 8},
    {"policy": "snapkv", "budget": 0},
    {"policy": "snapkv", "budget": -4},
    {"policy": "snapkv", "budget": 31},
    {"policy": "snapkv", "budget": 32},
    {"policy": "snapkv", "budget": 16, "window": 16},
    {"policy": "snapkv", "budget": 0.0},
    {"policy": "snapkv", "budget": 1.5},
    {"policy": "snapkv", "budget": 1.0},
    {"policy": "snapkv", "budget": 1e-7},
    {"policy": "streaming", "budget": 4},
    {"policy": "streaming", "budget": 5},
    {"policy": "streaming", "budget": 2, "sink": 1},
    {"policy": "streaming", "budget": 100, "sink": -1},
    {"policy": "snapkv", "budget": 64, "window": 0},
    {"policy": "snapkv", "budget": 64, "window": 8.5},
    {"policy": "snapkv", "budget": 64, "pool_size": 0},
    {"policy": "snapkv", "budget": 64, "pool_size": 4},
    {"policy": "snapkv", "budget": 64, "kernel": 5},  # the deprecated name of pool_size
    {"policy": "pyramid", "budget": 0.2, "kernel": 3},
    {"policy": "streaming", "budget": 64, "kernel": 5},
    {"policy": "snapkv", "budget": 64, "kernel": 0},
    {"policy": "snapkv", "budget": 64, "kernel": 4},
    {"policy": "snapkv", "budget": 64, "kernel": 5, "pool_size": 5},
    {"policy": "snapkv", "budget": 64, "kernel": 5, "pool_size": 7},
    {"preset": "snapkv-2k", "kernel": 5},
    {"preset": "snapkv-2k", "kernel": 4},
    {"policy": "snapkv", "budget": 64, "pooling": "mean"},
    {"policy": "pyramid", "budget": 64, "beta": 0.5},
    {"policy": "pyramid", "budget": 64, "beta": 1},
    {"policy": "pyramid", "budget": 64, "tiers": 0},
    {"policy": "pod", "recent": 0},
    {"policy": "pod", "group_size": 0},
    {"policy": "windowkv", "budget": 0.1, "window_size": 0},
    {"policy": "windowkv", "budget": 0.1, "window_size": "auto"},
    {"policy": "windowkv", "budget": 0.1, "window_size": "big"},
    {"policy": "windowkv-per-head", "budget": 0.1, "window_size": "auto"},
    {"policy": "windowkv", "budget": 0.1, "window_scoring": "average"},
    {"policy": "windowkv", "budget": 0.1, "window_scoring": "mean"},
    {"policy": "windowkv", "budget": 0.1, "concentration_threshold": 1.0},
    {"policy": "snapkv", "budget": 64, "prefill_chunk": 31},
    {"policy": "snapkv", "budget": 64, "prefill_chunk": 32},
    {"policy": "pyramid", "budget": 0.1, "window": 8, "prefill_chunk": 8},
    {"policy": "streaming", "budget": 64, "prefill_chunk": 1},
    {"policy": "streaming", "budget": 64, "prefill_chunk": 0},
    {"policy": "pod", "prefill_chunk": 256},
    {"policy": "snapkv", "budget": 64, "cache_prefix": "auto"},
    {"policy": "pod", "cache_prefix": 0},
    {"policy": "snapkv", "budget": 64, "cache_prefix": -1},
    {"policy": "snapkv", "budget": 64, "cache_prefix": "all"},
    {"policy": "full", "cache_prefix": 64},
    *({"preset": p.stem} for p in sorted((ROOT / "configs").glob("*.yaml"))),
    {"preset": "pyramid-10pct", "budget": 16},
    {"preset": "pyramid-10pct", "budget": 16, "window": 8},
    {"preset": "windowkv-12pct", "policy": "snapkv"},
    {"preset": "snapkv-2k", "policy": "pyramid"},
    {"preset": "pod-35pct", "recent": 0},
    {"preset": "snapkv-2k", "sink": 4},
]


def chart_values(case: dict) -> dict:
    """The chart values asking for this case (a whole-number ratio is written as a string)."""
    budget = case.get("budget")
    params = {k: v for k, v in case.items() if k not in ("policy", "budget", "preset")}
    return {
        "kvPolicy": case.get("policy", ""),
        "kvPreset": case.get("preset", ""),
        "kvBudget": repr(budget) if isinstance(budget, float) and budget.is_integer() else budget,
        "kvParams": {camel(k): v for k, v in params.items()},
    }


def kv_namespace(engine_args, **fields) -> argparse.Namespace:
    """What vLLM's parser hands the plugin for these --kv-* values (None: flag not given)."""
    names = ["kv_policy", "kv_config", *(f"kv_{field}" for field, _, _ in engine_args.FLAGS.values())]
    return argparse.Namespace(**{**dict.fromkeys(names), **fields})


def vllm_verdict(engine_args, case: dict) -> dict | str:
    """The plugin's start-up settings for the case, or its error message."""
    fields = {f"kv_{k}": v for k, v in case.items() if k != "preset"}
    if "preset" in case:
        fields["kv_config"] = str(ROOT / "configs" / f"{case['preset']}.yaml")
    try:
        return engine_args.settings_from_args(kv_namespace(engine_args, **fields))
    except ValueError as err:
        return str(err)


def parse_rendered(engine_args, args: list[str]) -> dict:
    """Settings from the chart's rendered args, through the plugin's own flag parser."""
    parser = argparse.ArgumentParser()
    engine_args.add_kv_arguments(parser)
    kv: list[str] = []
    for name, value in itertools.pairwise(args):
        if name.startswith("--kv-"):  # every --kv-* flag takes a value; the preset is read from configs/
            kv += [name, value.replace("/etc/kvcomp/", f"{ROOT}/configs/")]
    return engine_args.settings_from_args(parser.parse_args(kv))


def camel(field: str) -> str:
    return re.sub(r"_(\w)", lambda m: m[1].upper(), field)


def faulty_field(message: str) -> str:
    """The KVPolicyConfig field an error message names: `(field x)` or the `x:` it starts with."""
    message = message.removeprefix("invalid kvcomp settings: ")
    named = re.search(r"\(field ([a-z_]+)", message)
    return named[1] if named else message.split(":")[0]


@pytest.fixture(scope="module")
def engine_args():
    from kvcomp_vllm.vllm_integration import engine_args

    return engine_args


def test_chart_accepts_and_rejects_kvcomp_settings_as_kvpolicyconfig_does(tmp_path, engine_args):
    verdicts = {"accepted": 0, "rejected": 0}
    for case in CASES:
        expected = vllm_verdict(engine_args, case)
        try:
            args = container(render(tmp_path, chart_values(case)))["args"]
        except HelmError as err:
            assert isinstance(expected, str), f"{case}: the chart refuses what vLLM takes: {err}"
            field = faulty_field(expected)
            assert field in str(err) or camel(field) in str(err), (
                f"{case}: vLLM names {field!r}, the chart says {err}"
            )
            verdicts["rejected"] += 1
            continue
        assert isinstance(expected, dict), f"{case}: the chart renders what vLLM refuses: {expected}"
        assert parse_rendered(engine_args, args) == expected, case
        verdicts["accepted"] += 1
    assert min(verdicts.values()) >= 20, verdicts  # the table exercises both sides


def test_every_preset_is_a_valid_kvpolicyconfig():
    from kvcomp_vllm.config import load_preset

    for path in (CHART / "presets").glob("*.yaml"):
        load_preset(path)
    assert sorted(p.name for p in (CHART / "presets").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "configs").glob("*.yaml")
    )


def test_kv_params_cover_every_flag_of_the_plugin(engine_args):
    fields = {field for field, _, _ in engine_args.FLAGS.values()} - {"budget"}
    old = {field for field, _ in engine_args.OLD_FLAGS.values()}  # deprecated names, read for one release
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["kvParams"]["properties"]) == {camel(f) for f in fields | old}
    assert set(PARAMS) == fields  # the parity table tries each of them with each policy


def test_override_rules_become_the_flags_a_server_parses(tmp_path, engine_args):
    args = container(render(tmp_path, {"kvOverrides": {"allow": "lower", "policies": ["snapkv", "pyramid"], "maxBudget": "0.2"}}))["args"]
    assert (flag(args, "--kv-overrides"), flag(args, "--kv-override-policies"), flag(args, "--kv-override-max-budget")) == (
        "lower", "snapkv,pyramid", "0.2")
    parser = argparse.ArgumentParser()
    engine_args.add_kv_arguments(parser)
    known, _ = parser.parse_known_args(args)
    assert engine_args.override_rules_from_args(known) == {"allow": "lower", "policies": ("snapkv", "pyramid"), "max_budget": 0.2}
    assert flag(container(render(tmp_path, {"kvOverrides": {"maxBudget": 512}}))["args"], "--kv-override-max-budget") == "512"
    with pytest.raises(HelmError, match="allow"):
        render(tmp_path, {"kvOverrides": {"allow": "some"}})
