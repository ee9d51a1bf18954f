"""Arguments and entry points of `kvcomp-vllm pod-calibrate` and `kvcomp-vllm pod-adapt`."""

from __future__ import annotations

import argparse
import json

from ..config import KVPolicyConfig, load_preset


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (transformers)")
    parser.add_argument("--out", required=True, help="grouping file to write: a pod preset for --kv-config")
    parser.add_argument("--prompts", type=int, default=4, help="long prompts to measure (default 4)")
    parser.add_argument("--length", type=int, default=4096, help="tokens per prompt (default 4096)")
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--recent", type=int, default=1024)
    parser.add_argument("--window", type=int, default=64, help="last prompt queries whose attention is compared")
    parser.add_argument("--threshold", type=float, default=None,
                        help="largest JS divergence (nats) to the owner for a layer to join its group; "
                        "default: the smallest giving --members member layers")
    parser.add_argument("--members", type=int, default=None, help="member layers wanted (default 70%% of the layers)")
    parser.add_argument("--max-group", type=int, default=4, help="most layers per group (default 4)")
    parser.add_argument("--any-order", action="store_true",
                        help="groups of any layers (default: consecutive runs, as the paper)")
    parser.add_argument("--corpus", default=None, help="generated (default), devils-dictionary or a text file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def calibrate(args: argparse.Namespace) -> int:
    """Measure distant-token attention similarity between layers and write PoD layer groups."""
    from .calibrate import calibrate as run
    from .calibrate import write

    result = run(args.model, prompts=args.prompts, length=args.length, sink=args.sink, recent=args.recent,
                 window_=args.window, threshold=args.threshold, members_wanted=args.members,
                 max_group=args.max_group, consecutive=not args.any_order, corpus=args.corpus, seed=args.seed,
                 device=args.device)
    KVPolicyConfig(**{k: v for k, v in result.items() if k != "calibration"})  # what --kv-config will read
    path = write(result, args.out)
    notes = result["calibration"]
    print(f"{path}: groups {result['groups']} ({notes['members']} member layers, threshold {notes['threshold']})")
    return 0


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    from .adapt import AdaptSettings

    d = AdaptSettings()
    parser.add_argument("model", help="model folder to adapt (transformers)")
    parser.add_argument("--out", required=True, help="folder of the adapted checkpoint and the resumable state")
    parser.add_argument("--kv-config", default=None, help="pod preset: pod-calibrate's grouping file or configs/*.yaml")
    parser.add_argument("--sink", type=int, default=None)
    parser.add_argument("--recent", type=int, default=None)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=d.steps, help="total steps over all runs")
    parser.add_argument("--minutes", type=float, default=None, help="stop this run after so many minutes (resumable)")
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--continuation", type=int, default=d.continuation, help="trained tokens after each prompt")
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0: fine-tune every weight")
    parser.add_argument("--objective", choices=("distill", "lm"), default=d.objective,
                        help="distill (default): match the original model's full-attention predictions; lm: the text")
    parser.add_argument("--save-every", type=int, default=d.save_every)
    parser.add_argument("--corpus", default=None, help="generated (default), devils-dictionary or a text file")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device)


def pod_config(args: argparse.Namespace) -> KVPolicyConfig:
    """The geometry to adapt for: the preset's pod fields, then the flags."""
    fields = load_preset(args.kv_config).model_dump(exclude_unset=True) if args.kv_config else {"policy": "pod"}
    if fields.get("policy") != "pod":
        raise ValueError(f"--kv-config {args.kv_config}: policy {fields.get('policy')!r}, not pod")
    for name in ("sink", "recent", "group_size"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if "group_size" in fields and args.group_size is not None:
        fields.pop("groups", None)
    return KVPolicyConfig(**fields)


def adapt(args: argparse.Namespace) -> int:
    """Fine-tune a model to PoD's shared distant keys and write a checkpoint `vllm serve --kv-policy pod` serves."""
    from .adapt import AdaptSettings
    from .adapt import adapt as run

    settings = AdaptSettings(steps=args.steps, minutes=args.minutes, seq_len=args.seq_len,
                             continuation=args.continuation, batch=args.batch, lr=args.lr,
                             lora_rank=args.lora_rank, objective=args.objective, save_every=args.save_every,
                             corpus=args.corpus,
                             seed=args.seed, device=args.device)
    print(json.dumps(run(args.model, args.out, pod_config(args), settings)))
    return 0
