"""`kvcomp-vllm`: what is not `vllm serve` — `doctor`, `presets`, `bench`, `eval`.

    kvcomp-vllm doctor [--kv-policy pyramid --kv-budget 0.1 | --kv-config configs/pyramid-10pct.yaml]
    kvcomp-vllm presets
    kvcomp-vllm bench [benchmark args, e.g. --preset h100-8b]          (benchmarks/policies.py)
    kvcomp-vllm bench serve [args, e.g. --preset h200-8b --rates 0.5,1]   (benchmarks/serve.py)
    kvcomp-vllm eval --model DIR [--policies ... --budgets ... --lengths ...]   (kvcomp_vllm/eval/)
    kvcomp-vllm eval report RESULTS_DIR... --out benchmarks/results/quality      (kvcomp_vllm/eval/page.py)
    kvcomp-vllm pod-calibrate MODEL --out groups.json     (PoD layer groups from attention similarity)
    kvcomp-vllm pod-adapt MODEL --out DIR [--kv-config groups.json]   (fine-tune to shared distant keys)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from . import __version__
from .config import load_preset

SOURCE_ROOT = Path(__file__).resolve().parents[1]
PRESETS = SOURCE_ROOT / "configs"
BENCHMARK = SOURCE_ROOT / "benchmarks" / "policies.py"
SERVE_BENCHMARK = SOURCE_ROOT / "benchmarks" / "serve.py"


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def doctor(args: argparse.Namespace) -> int:
    """Print versions (whether kvcomp-vllm is tested with this vLLM), device, plugin registration, the
    effective config of the given flags, the vLLM features a compressing policy refuses and the vLLM
    internals kvcomp patches."""
    import torch

    from .vllm_integration.compat import PATCHED_INTERNALS, platform_name, vllm_support, vllm_version
    from .vllm_integration.engine_args import settings_from_args, validated
    from .vllm_integration.refusals import BEAM_SEARCH, LAYER_KINDS, REFUSED

    plugins = {ep.name: ep.value for ep in md.entry_points(group="vllm.general_plugins")}
    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    lines = [
        f"kvcomp-vllm {__version__}",
        f"vllm {_version('vllm')}, torch {torch.__version__}, transformers {_version('transformers')}",
        f"vLLM {vllm_version()} on {platform_name()}: {vllm_support()}",
        f"device: {device}",
        f"plugin registered with vLLM: {'yes' if 'kvcomp' in plugins else 'no'}"
        + (f" ({plugins['kvcomp']})" if "kvcomp" in plugins else ""),
    ]
    if not torch.cuda.is_available():
        lines += cpu_packings()
    settings = settings_from_args(args)
    config = validated(settings) if settings else None
    lines.append(f"effective config: {config.describe() if config else 'none given (vLLM serves full KV)'}")
    refused = ", ".join(f"{r.feature} ({r.flag})" for r in (*REFUSED.values(), BEAM_SEARCH))
    lines.append(f"refused with a compressing policy (untested): {refused}")
    lines.append(f"layers: {LAYER_KINDS}")
    lines.append("patched vLLM internals:")
    lines += [f"  {target}: {why} [checked on vLLM {', '.join(on)}]" for target, why, on in PATCHED_INTERNALS]
    print("\n".join(lines))
    return 0 if "kvcomp" in plugins else 1


def cpu_packings(block_size: int = 128, head_dim: int = 128) -> list[str]:
    """Per `--dtype`, the KV packing vLLM's CPU attention picks on this host and whether kvcomp addresses
    it (a model's own block size and head size are checked again at start-up)."""
    import torch

    from .vllm_integration.compat import cpu_attention_isa, cpu_block_tilings

    lines = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        try:
            isa = cpu_attention_isa(dtype, block_size, head_dim, "auto")
            cpu_block_tilings(isa, dtype, block_size, head_dim)
            lines.append(f"CPU KV packing at --dtype {name}: {isa}, addressed")
        except Exception as err:  # noqa: BLE001 - any failure is this dtype's answer, not doctor's
            lines.append(f"CPU KV packing at --dtype {name}: not served with compression ({err})")
    return lines


def presets(args: argparse.Namespace) -> int:
    """List the YAML presets with the policy and parameters each one sets."""
    if not PRESETS.is_dir():
        print(f"no presets: {PRESETS} is not there (presets ship with the source tree)", file=sys.stderr)
        return 1
    for path in sorted(PRESETS.glob("*.yaml")):
        print(f"{path.relative_to(SOURCE_ROOT)}: {load_preset(path).describe()}")
    return 0


def bench(args: argparse.Namespace, rest: list[str]) -> int:
    """Run benchmarks/policies.py with the remaining arguments; `bench serve ...`: benchmarks/serve.py."""
    script = BENCHMARK
    if rest[:1] == ["serve"]:
        script, rest = SERVE_BENCHMARK, rest[1:]
    return subprocess.call([sys.executable, str(script), *rest])


def evaluate(args: argparse.Namespace) -> int:
    """Answer quality per policy and KV budget on long-context tasks; JSON/CSV and plots."""
    from .eval.main import evaluate as run
    from .eval.main import show

    show(run(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["eval", "report"]:  # the quality page: its own arguments, no model to load
        from .eval.page import main as report

        return report(argv[2:])
    from .eval.main import add_arguments as add_eval_arguments
    from .pod import commands as pod
    from .vllm_integration.engine_args import add_kv_arguments

    parser = argparse.ArgumentParser(prog="kvcomp-vllm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_kv_arguments(commands.add_parser("doctor", help=doctor.__doc__))
    commands.add_parser("presets", help=presets.__doc__)
    commands.add_parser("bench", help=bench.__doc__, add_help=False)
    add_eval_arguments(commands.add_parser("eval", help=evaluate.__doc__))
    pod.add_calibrate_arguments(commands.add_parser("pod-calibrate", help=pod.calibrate.__doc__))
    pod.add_adapt_arguments(commands.add_parser("pod-adapt", help=pod.adapt.__doc__))
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return bench(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        run = {"doctor": doctor, "presets": presets, "eval": evaluate, "pod-calibrate": pod.calibrate, "pod-adapt": pod.adapt}
        return run[args.command](args)
    except ValueError as err:
        parser.exit(2, f"kvcomp-vllm {args.command}: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
