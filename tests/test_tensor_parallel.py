"""Tensor parallelism: ranks holding slices of the KV heads select as one device holding all of them.

Unit tests split the heads of dense views in this process, and run the gathers of `tensor_parallel` on
two gloo processes. The engine test serves one mixed batch (every policy but pod through per-request
overrides, two requests failing on rank 1 only) and a pod batch at TP=2 and at TP=1, each in its own
process (TP=2 spawns worker processes; tests otherwise run the engine in-process), and compares
tokens, freed blocks and the compaction counts the workers report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import PromptView, RequestCompressor, make_policy
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.vllm_integration.metrics import WorkerReports

ROOT = Path(__file__).resolve().parent.parent
KV_HEADS, HEADS, D = 4, 8, 16

# Peaked prompts' concentration: 0.17 over all heads, 0.11 on rank 0's and 0.23 on rank 1's of two, so
# at threshold 0.2 (0.15) rank 1 (0) alone would decide otherwise than all heads together.
SPANNING = [
    *(dict(policy="windowkv", budget=40, window=8, window_size=4, concentration_threshold=t) for t in (0.15, 0.2)),
    dict(policy="windowkv", budget=40, window=8, window_size=4, window_scoring="max"),
    dict(policy="windowkv", budget=40, window=8, window_size=4, window_scoring="average"),
    *(dict(policy="windowkv-per-head", budget=40, window=8, window_sizes=(2, 8), concentration_threshold=t)
      for t in (0.15, 0.2)),  # adaptive window size
]
LOCAL = [
    dict(policy="windowkv-per-head", budget=40, window=8, window_size=4),
    dict(policy="snapkv", budget=40, window=8),
    dict(policy="pyramid", budget=40, window=8),
    dict(policy="streaming", budget=40),
    dict(policy="pod", recent=16, group_size=2),
    dict(policy="full"),
]


def dense(n: int, seed: int, peaked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys `[KV_HEADS, n, D]` and queries `[HEADS, n, D]`; `peaked` makes one head's attention concentrated."""
    g = torch.Generator().manual_seed(seed)
    keys, queries = torch.randn(KV_HEADS, n, D, generator=g), torch.randn(HEADS, n, D, generator=g)
    if peaked:  # KV head 3 (ranks: the second) draws its queries to a few keys
        keys[3, 5:9] = 8 * queries[6:8, -1].mean(0)
    return keys, queries


def shard(keys, queries, rank: int, ranks: int) -> PromptView:
    """The view rank `rank` of `ranks` holds: its contiguous slice of KV heads and their query heads."""
    k, q = KV_HEADS // ranks, HEADS // ranks
    return PromptView.dense(keys[rank * k : (rank + 1) * k], queries[rank * q : (rank + 1) * q], D**-0.5, context_len=keys.shape[1])


def split_plans(settings: dict, keys, queries, ranks: int, layers=(0, 1)) -> dict[int, torch.Tensor | None]:
    """Each layer's keep over all heads, assembled from `ranks` ranks that gather head statistics in-process."""
    policy = make_policy(KVPolicyConfig(**settings), 2)
    compressors = [RequestCompressor(policy) for _ in range(ranks)]
    keeps = {}
    for layer in layers:
        views = [shard(keys, queries, r, ranks) for r in range(ranks)]
        rows = [policy.selector.head_statistics(layer, v) if compressors[0].gathers(layer) else None for v in views]
        heads = None if rows[0] is None else torch.cat(rows)
        plans = [c.plan(layer, v, gather=lambda _, heads=heads: heads) for c, v in zip(compressors, views)]
        keeps[layer] = None if plans[0].keep is None else torch.cat([p.keep for p in plans])
    return keeps


@pytest.mark.parametrize("settings", SPANNING + LOCAL, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
def test_ranks_holding_head_slices_keep_what_one_device_keeps(settings, peaked):
    keys, queries = dense(120, seed=3, peaked=peaked)
    one = RequestCompressor(make_policy(KVPolicyConfig(**settings), 2))
    for ranks in (2, 4):
        got = split_plans(settings, keys, queries, ranks)
        for layer, keep in got.items():
            want = one.plan(layer, PromptView.dense(keys, queries, D**-0.5, context_len=120)).keep
            assert (keep is None and want is None) or torch.equal(keep, want), (ranks, layer)


@pytest.mark.parametrize("settings", SPANNING, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_without_the_gather_ranks_would_decide_apart(settings):
    """The statistics matter: ranks deciding from their own heads only keep other positions."""
    keys, queries = dense(120, seed=3, peaked=True)
    policy = make_policy(KVPolicyConfig(**settings), 2)
    alone = [policy.selector.select(0, shard(keys, queries, r, 2)).keep for r in range(2)]
    together = split_plans(settings, keys, queries, 2, layers=(0,))[0]
    assert not torch.equal(torch.cat(alone), together)


def test_policies_spanning_heads_are_named():
    assert [make_policy(KVPolicyConfig(**s), 2).selector.spans_heads for s in SPANNING] == [True] * len(SPANNING)
    assert [make_policy(KVPolicyConfig(**s), 2).selector.spans_heads for s in LOCAL] == [False] * len(LOCAL)


GLOO_RANK = '''
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[4])
from test_tensor_parallel import SPANNING, dense, shard
from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import RequestCompressor, make_policy
from kvcomp_vllm.vllm_integration.tensor_parallel import HeadExchange, HeadsFailed, TPGroup, failed_anywhere

rank, ranks = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", init_method=sys.argv[3], rank=rank, world_size=ranks)

def all_gather(t):
    parts = [torch.empty_like(t) for _ in range(ranks)]
    dist.all_gather(parts, t)
    return torch.cat(parts)

group = TPGroup(ranks, dist.group.WORLD, all_gather)
out = {"keep": {}}
keys, queries = dense(120, seed=3, peaked=True)
for i, settings in enumerate(SPANNING):
    compressor = RequestCompressor(make_policy(KVPolicyConfig(**settings), 2))
    out["keep"][i] = compressor.plan(0, shard(keys, queries, rank, ranks), gather=HeadExchange(group)).keep.tolist()
# A rank whose work failed before the gather stands in: every rank then fails the request alike.
exchange = HeadExchange(group)
try:
    if rank == 1:
        exchange.stand_in()
        out["stood_in"] = True
    else:
        RequestCompressor(make_policy(KVPolicyConfig(**SPANNING[0]), 2)).plan(0, shard(keys, queries, rank, ranks), gather=exchange)
except HeadsFailed as err:
    out["failed"] = str(err)
# Replicated KV heads (fewer than ranks): each rank holds one head, gathered once.
replicated = TPGroup(ranks, dist.group.WORLD, all_gather, replicas=2)
from kvcomp_vllm.vllm_integration.tensor_parallel import exchange as gather_rows
out["replicated"] = gather_rows(replicated, torch.full((1, 3), float(rank // 2))).tolist()
out["union"] = failed_anywhere(group, ["a", "b", "c"], {"b"} if rank == 1 else {"c"} if rank == 2 else set())
print("RESULT" + json.dumps(out))
'''


def test_gloo_ranks_gather_head_statistics_stand_in_for_failures_and_share_failures(tmp_path):
    ranks, script = 4, tmp_path / "rank.py"
    script.write_text(GLOO_RANK)
    init = f"file://{tmp_path / 'store'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(ranks), init, str(ROOT / "tests")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(ranks)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.split("RESULT")[-1]))
    keys, queries = dense(120, seed=3, peaked=True)
    for i, settings in enumerate(SPANNING):
        want = RequestCompressor(make_policy(KVPolicyConfig(**settings), 2)).plan(
            0, PromptView.dense(keys, queries, D**-0.5, context_len=120)).keep
        assert torch.equal(torch.tensor([row for out in outs for row in out["keep"][str(i)]]), want), settings
    assert outs[1].get("stood_in") and all("ranks [1] failed" in outs[r]["failed"] for r in (0, 2, 3))
    assert all(out["replicated"] == [[0.0] * 3, [1.0] * 3] for out in outs)
    assert all(out["union"] == ["b", "c"] for out in outs)


# The engine at TP=2 and TP=1 ------------------------------------------------------------------------

TP_RUN = '''
import gc, json, sys
from vllm import LLM, SamplingParams
from kvcomp_vllm.testing.engine import drive
from kvcomp_vllm.vllm_integration import compacted, timing
from kvcomp_vllm.vllm_integration.report import RPC_METHOD


def main():
    model, tp, batches = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    results = []
    for batch in batches:
        executor = {"distributed_executor_backend": "mp"} if tp > 1 else {}
        llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0, block_size=32,
                  tensor_parallel_size=tp, additional_config={"kvcomp": batch["server"]}, **executor)
        params = [SamplingParams(max_tokens=batch["max_tokens"], temperature=0, ignore_eos=True,
                                 **({"extra_args": {"kvcomp": o}} if o else {})) for o in batch["overrides"]]
        run = drive(llm, batch["prompts"], params)
        results.append({"tokens": run.tokens, "finish": run.finish_reasons,
                        "free": [run.free_blocks_before, run.free_blocks_after],
                        "reports": llm.collective_rpc(RPC_METHOD)})
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        compacted.reset(), timing.reset()  # a TP=1 worker runs in this process: the next engine counts afresh
    print("RESULT" + json.dumps(results))


if __name__ == "__main__":
    main()
'''

# Prompt lengths whose planning fails on rank 1 only, at layer 1, and their requests' settings.
POISON = {301: {"policy": "windowkv", "budget": 100, "group_size": 2}, 303: {"policy": "snapkv", "budget": 100}}

FAULT = f'''
from kvcomp_vllm.policies import RequestCompressor
_plan = RequestCompressor.plan
def plan(self, layer, view, *args, **kwargs):
    if view.context_len in {set(POISON)} and layer == 1:
        from vllm.distributed import parallel_state
        if parallel_state.model_parallel_is_initialized() and parallel_state.get_tp_group().rank_in_group == 1:
            raise RuntimeError("injected fault on rank 1")
    return _plan(self, layer, view, *args, **kwargs)
RequestCompressor.plan = plan
'''

SERVER = dict(policy="pyramid", budget=0.12)  # a tier per layer: every policy but pod fits as an override
OVERRIDES = [
    None,  # the server's pyramid
    {"policy": "snapkv", "budget": 64},
    {"policy": "windowkv", "budget": 100, "group_size": 2},  # auto scoring
    {"policy": "windowkv", "budget": 100, "window_scoring": "max", "window_size": 4},
    {"policy": "windowkv", "budget": 100, "window_scoring": "average"},
    {"policy": "windowkv", "budget": 100, "prefill_chunk": 128},  # rounds every 128 tokens, window queries stashed
    {"policy": "windowkv-per-head", "budget": 100, "group_size": 2},  # adaptive window size
    {"policy": "windowkv-per-head", "budget": 100, "window_size": 8},
    {"policy": "streaming", "budget": 40},
    {"policy": "full"},
    {"policy": "windowkv", "budget": 100},  # a short prompt: kept whole, no statistics to gather
]


def prompts_of(model_dir, lengths: list[int], seed: int = 90) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer(" ".join(synthetic_text(60, seed + i))).input_ids[:n] for i, n in enumerate(lengths)]


def start(model_dir, tp: int, batches: list[dict], tmp_path: Path, fault: bool) -> subprocess.Popen:
    script = tmp_path / f"tp{tp}.py"
    script.write_text(TP_RUN)
    site = tmp_path / f"site{tp}"
    site.mkdir()
    if fault:
        (site / "sitecustomize.py").write_text(FAULT)  # runs in the worker processes too
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0|1" if tp > 1 else "auto",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), str(model_dir), str(tp), json.dumps(batches)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(proc: subprocess.Popen) -> tuple[list[dict], str]:
    """Each batch's results, and the log."""
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads(stdout.split("RESULT")[-1]), stdout + stderr  # vLLM logs to stdout


def served(reports: list[dict]) -> dict:
    """The compaction counts `/metrics` serves from these workers' reports."""
    collector = WorkerReports()
    collector.update(reports)
    return collector.compacted


@pytest.mark.vllm
def test_tp2_serves_every_policy_as_tp1_does(tiny_llama_kv4_dir, tmp_path):
    kv4_dir = tiny_llama_kv4_dir
    lengths = [400 + 37 * i for i in range(len(OVERRIDES) - 1)] + [60]
    good = prompts_of(kv4_dir, lengths)
    # Texts of their own: a poisoned prompt opening like a good one would change what cache_prefix auto keeps.
    poisoned = prompts_of(kv4_dir, list(POISON), seed=190)
    pod = {"server": dict(policy="pod", recent=48, group_size=2), "prompts": good[:2], "overrides": [None, None], "max_tokens": 8}
    mixed = {"server": SERVER, "prompts": good, "overrides": OVERRIDES, "max_tokens": 8}
    faulty = {**mixed, "prompts": good + poisoned,
              "overrides": OVERRIDES + list(POISON.values())}
    tp2 = start(kv4_dir, 2, [faulty, pod], tmp_path, fault=True)
    tp1, _ = results(start(kv4_dir, 1, [mixed, pod], tmp_path, fault=False))
    tp2, log = results(tp2)
    for one, two in zip(tp1, tp2):
        assert {r["rank"] for r in two["reports"]} == {0, 1} and {r["rank"] for r in one["reports"]} == {0}
        for req_id, tokens in one["tokens"].items():
            assert two["tokens"][req_id] == tokens, req_id
            assert two["finish"][req_id] == "length"
        assert two["free"][0] == two["free"][1] and one["free"][0] == one["free"][1]
        # Both ranks compacted the same tokens (each its own heads); served once, they equal TP=1's counts.
        assert two["reports"][0]["compacted"] == two["reports"][1]["compacted"]
        assert served(two["reports"]) == served(one["reports"]) != {}
        assert all(r["timings"]["scoring"] for r in two["reports"])  # every rank times its own scoring
    first_poisoned = len(good)
    assert [tp2[0]["finish"][f"req-{first_poisoned + i}"] for i in range(len(POISON))] == ["error"] * len(POISON)
    # windowkv's rank 1 stood in at the next gather (layer 2), so rank 0 failed it there too; snapkv
    # gathers nothing: rank 0 learnt of the failure at the step's end.
    assert "ranks [1] failed this layer's scoring" in log and "scoring layer 2 failed" in log
    assert re.search(rf"request req-{first_poisoned + 1}\S* failed on another tensor-parallel rank", log)
    assert set(served(tp1[0]["reports"])) == {"pyramid", "snapkv", "windowkv", "windowkv-per-head", "streaming", "full"}
