"""benchmarks/serve.py: configuration specs, the pass plan, the report, the dummy-weight model folder, and
(marked vllm) a CPU smoke run of `vllm serve` + `vllm bench serve` per configuration and rate."""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import serve as bench  # noqa: E402
from serve_report import SLO, highest_rate, merge, report  # noqa: E402

PERCENTILE_KEYS = [f"p{q}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for q in (50, 90, 99)]


def test_config_specs_become_serve_flags():
    assert bench.parse_config("vanilla") == bench.ServeConfig("vanilla", (), False)
    snap = bench.parse_config("snapkv-10%=snapkv:budget=0.1,pool_size=15")
    assert snap == bench.ServeConfig(
        "snapkv-10%", ("--kv-policy", "snapkv", "--kv-budget", "0.1", "--kv-pool-size", "15"), True)
    assert bench.parse_config("windowkv:budget=0.12,window-size=8").args[-2:] == ("--kv-window-size", "8")
    preset = bench.parse_config("configs/pyramid-10pct.yaml")
    assert preset.name == "pyramid-10pct"
    assert preset.args == ("--kv-config", str(bench.SOURCE_ROOT / "configs/pyramid-10pct.yaml"))
    assert bench.parse_config("p=configs/pod-35pct.yaml").name == "p"
    off = bench.parse_config("snapkv-nopc=snapkv:budget=0.1,prefix_caching=off")
    assert off.args == ("--kv-policy", "snapkv", "--kv-budget", "0.1", "--no-enable-prefix-caching")
    assert bench.parse_config("vanilla:prefix_caching=off") == bench.ServeConfig(
        "vanilla:prefix_caching=off", ("--no-enable-prefix-caching",), False)


@pytest.mark.parametrize("spec, message", [
    ("snapkv:budget=1.5", "budget: a ratio must lie in (0, 1], got 1.5"),
    ("snapkv:sink=4", "sink: not a parameter of policy 'snapkv'"),
    ("snapkv:budget", "'budget' is not key=value of a --kv-* flag"),
    ("snapkv:window_sizes=8", "is not key=value of a --kv-* flag"),
    ("pod:groups=2", "'groups=2' is not key=value of a --kv-* flag"),  # set through --kv-config only
    ("configs/none.yaml", "no file configs/none.yaml"),
    ("snapkv:prefix_caching=maybe", "prefix_caching is on or off, once"),
    ("snapkv:prefix_caching=on,prefix_caching=off", "prefix_caching is on or off, once"),
    ("vanilla:budget=0.1", "vanilla takes prefix_caching only, not 'budget=0.1'"),
])  # fmt: skip
def test_bad_config_specs_are_refused_before_any_server_starts(spec, message):
    with pytest.raises(ValueError, match="config") as err:
        bench.parse_config(spec)
    assert message in str(err.value)


def test_every_spec_key_is_a_vllm_serve_flag():
    from kvcomp_vllm.config import KVPolicyConfig
    from kvcomp_vllm.vllm_integration.engine_args import FLAGS

    for flag, (key, _, _) in FLAGS.items():  # every flag's field can be given in a spec
        assert key in KVPolicyConfig.model_fields and flag == f"--kv-{key.replace('_', '-')}"


def test_every_pass_has_its_own_seed_and_the_warmup_comes_first():
    workloads = [bench.Workload("A", 100, 10, (0.5, math.inf)), bench.Workload("B", 50, 5, (1.0,))]
    passes = bench.plan(workloads, num_prompts=4, seed=7, warmup_prompts=2)
    assert [(p.label, p.seed, p.num_prompts) for p in passes] == [
        ("warmup", 7, 2), ("A-rate0.5", 8, 4), ("A-rateinf", 9, 4), ("B-rate1", 10, 4)]
    assert passes[0].workload.output_len == 8 and passes[0].workload.input_len == 100
    cmd = bench.bench_command("http://h:1", Path("/m"), passes[2], SLO(10000, 60), Path("/r"), "snapkv-10%")
    text = " ".join(cmd)
    for part in ("bench serve", "--dataset-name random", "--random-input-len 100", "--random-output-len 10",
                 "--request-rate inf", "--seed 9", "--ignore-eos", "--goodput ttft:10000 tpot:60", "--save-result",
                 "--metric-percentiles 50,90,99", "--percentile-metrics ttft,tpot,itl,e2el", "--tokenizer /m"):
        assert part in text


def test_h200_preset_plan(capsys):
    assert bench.main(["--preset", "h200-8b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("vanilla:", "snapkv-10%:", "pyramid-10pct:", "windowkv-12pct:"):
        assert sum(line.startswith(name) for line in out.splitlines()) == 1
    assert "--load-format dummy" in out and "--max-model-len 33184" in out  # S: 4096 + 28000 + 1024, + 64
    assert '"VLLM_PLUGINS": ""' in out.splitlines()[0]  # vanilla: the plugin stays out
    assert "A-rate0.1: 64 x (32000 in, 1024 out)" in out and "B-rate0.5: 64 x (16000 in, 256 out)" in out
    assert "S-rate0.75: 64 x (4096 shared + 28000 in, 1024 out)" in out
    assert "D-rateinf: 64 x (32000 shared + 64 in, 128 out)" in out
    assert bench.main(["--preset", "h200-8b", "--workloads", "A", "--dry-run"]) == 0
    assert "--max-model-len 33088" in capsys.readouterr().out


def test_rates_and_lengths_from_flags(capsys):
    assert bench.main(["--input-len", "300", "--output-len", "20", "--rates", "0.5,inf", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "custom-rate0.5: 8 x (300 in, 20 out)" in out and "custom-rateinf: 8 x (300 in, 20 out)" in out
    with pytest.raises(SystemExit):
        bench.main(["--rates", "0,1", "--dry-run"])
    with pytest.raises(SystemExit):
        bench.main(["--prefix-len", "64", "--dry-run"])  # a preset's workloads carry their own prefix
    assert bench.main(["--input-len", "300", "--output-len", "20", "--prefix-len", "64", "--dry-run"]) == 0
    assert "custom-rate1: 8 x (64 shared + 300 in, 20 out)" in capsys.readouterr().out
    shared = bench.plan([bench.Workload("S", 300, 20, (1.0,), prefix_len=64)], 4, 0, 1)
    assert [p.workload.prefix_len for p in shared] == [64, 64]  # the warm-up has a prefix of its own (its seed)
    cmd = " ".join(bench.bench_command("http://h:1", Path("/m"), shared[1], SLO(10000, 60), Path("/r"), "v"))
    assert "--random-prefix-len 64 " in cmd and "--random-input-len 300 " in cmd
    assert "--random-prefix-len" not in " ".join(
        bench.bench_command("http://h:1", Path("/m"), bench.plan([bench.Workload("A", 9, 2, (1.0,))], 1, 0, 0)[0],
                            SLO(10000, 60), Path("/r"), "v"))


def _result(ttft99: float, tpot99: float, failed: int = 0) -> dict:
    keys = {k: 1.0 for k in PERCENTILE_KEYS}
    return {**keys, "p99_ttft_ms": ttft99, "p99_tpot_ms": tpot99, "completed": 4 - failed, "failed": failed,
            "request_throughput": 1.0, "output_throughput": 10.0, "request_goodput": 0.5}


def _pass(rate: str, result: dict | None, workload: str = "A") -> dict:
    p = {"workload": workload, "rate": rate, "num_prompts": 4, "warmup": False, "bench_command": "vllm bench serve ...",
         "prefix_cache": {"hits": 32.0, "queries": 1024.0}}
    return {**p, "result": result} if result else {**p, "error": "vllm bench serve exited with 1"}


def test_slo_and_highest_rate():
    slo = SLO(10000, 60)
    assert slo.met(_result(9000, 50)) and not slo.met(_result(11000, 50)) and not slo.met(_result(10, 61))
    assert not slo.met(_result(10, 10, failed=1))
    passes = [_pass("0.5", _result(100, 20)), _pass("1", _result(100, 70)), _pass("2", _result(100, 30)),
              _pass("inf", _result(20000, 30))]
    assert highest_rate(passes, slo) == "2 req/s"
    assert highest_rate(passes[3:], slo) == "none"
    assert highest_rate([_pass("inf", _result(1, 1))], slo) == "inf (burst)"


def test_report_writes_json_table_and_plots(tmp_path):
    meta = {"preset": "cpu-tiny", "model": "/m", "command": "python benchmarks/serve.py", "num_prompts": 4,
            "workloads": [{"name": "A", "input_len": 512, "output_len": 16, "rates": ["1", "inf"]}],
            "slo": {"ttft_ms": 10000.0, "tpot_ms": 60.0},
            "versions": {"device": "cpu", "vllm": "0.32.0", "kvcomp-vllm": "0.1.0", "commit": "abc", "torch": "2"}}
    runs = [
        {"config": "vanilla", "prefix_caching": True, "env": {"VLLM_PLUGINS": ""}, "serve_command": "vllm serve /m",
         "passes": [{**_pass("1", _result(50, 5)), "warmup": True}, _pass("1", _result(50, 5)), _pass("inf", None)]},
        {"config": "snapkv-10%", "error": "vllm serve exited with 1 before it was healthy", "passes": []},
    ]
    text = report(meta, runs, tmp_path, "s")
    assert {p.name for p in tmp_path.iterdir()} == {"s.json", "s.md", "s-A.png"}
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == runs
    lines = text.splitlines()
    assert "SLO: p99 TTFT <= 10 s and p99 TPOT <= 60 ms." in text and "--goodput ttft:10000 tpot:60" in text
    assert "| vanilla | on | 1 | 4/4 | 1.00 | 10.0 | 1.0 | 50.0 | 1.0 | 5.0 | 1.0 | 1.0 | 0.50 | 3.1% | yes |" in lines
    assert "| vanilla | on | inf | failed: vllm bench serve exited with 1 |" + " |" * 11 in lines
    assert any(line.startswith("| snapkv-10% | | does not start: vllm serve exited with 1") for line in lines)
    assert "| vanilla | 1 req/s |" in lines and "| snapkv-10% | none |" in lines
    assert "    VLLM_PLUGINS='' vllm serve /m" in lines


def test_runs_from_two_device_calls_merge_into_one_report(tmp_path):
    meta = {"preset": "h200-8b", "model": "/m", "command": "python benchmarks/serve.py --configs vanilla", "num_prompts": 4,
            "workloads": [{"name": "A", "input_len": 512, "output_len": 16, "rates": ["1"]}],
            "slo": {"ttft_ms": 10000.0, "tpot_ms": 60.0},
            "versions": {"device": "gpu", "vllm": "0.26.0", "kvcomp-vllm": "0.1.0", "commit": "abc", "torch": "2"}}
    one = {"config": "vanilla", "prefix_caching": True, "passes": [_pass("1", _result(50, 5))]}
    two = {"config": "snapkv-10%", "prefix_caching": False, "passes": [_pass("1", _result(40, 4))]}
    (tmp_path / "a.json").write_text(json.dumps({**meta, "runs": [one]}))
    (tmp_path / "b.json").write_text(json.dumps({**meta, "command": "python benchmarks/serve.py --configs snapkv",
                                                 "versions": {**meta["versions"], "commit": "def"}, "runs": [two]}))
    assert bench.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m"),
                       "--stem", "both"]) == 0
    merged = json.loads((tmp_path / "m" / "both.json").read_text())
    assert merged["runs"] == [one, two] and merged["versions"]["commit"] == "abc, def"
    text = (tmp_path / "m" / "both.md").read_text()
    assert "    python benchmarks/serve.py --configs vanilla\n    python benchmarks/serve.py --configs snapkv\n" in text
    assert "| vanilla | 1 req/s |" in text and "| snapkv-10% | 1 req/s |" in text
    (tmp_path / "c.json").write_text(json.dumps({**meta, "num_prompts": 8, "runs": [two]}))
    with pytest.raises(ValueError, match="cannot merge: num_prompts differs between .*a.json and .*c.json"):
        merge([tmp_path / "a.json", tmp_path / "c.json"])


def test_dummy_weight_model_folder_has_a_tokenizer_of_its_whole_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    path = bench.model_dir("llama-3.1-8b-shape", tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert {k: config[k] for k in bench.LLAMA_8B} == bench.LLAMA_8B and "model.safetensors" not in os.listdir(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.vocab_size == len(tok) == config["vocab_size"] == 128256
    ids = [random.Random(0).randrange(3, 128256) for _ in range(2000)] + [3, 128255]
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids  # N ids re-encode to the same N ids
    assert tok.num_special_tokens_to_add() == 0
    # vLLM 0.26 refuses a prompt of more than 7 characters per token before tokenizing it: 32000 of the
    # longest words, each with its space, stay under that.
    assert len(tok.decode([128255] * 32000)) <= 7 * 32000 and tok.convert_ids_to_tokens(128255) == "2qyn"
    assert bench.model_dir("llama-3.1-8b-shape", tmp_path) == path  # reused, not rebuilt


def _smoke(tmp_path: Path, monkeypatch, *argv: str) -> dict:
    """Run the benchmark with `argv` into tmp_path; checks every config and rate came back with its
    percentiles and that no server's process group is left; returns the JSON."""
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # servers as `vllm serve` runs them
    assert bench.main([*argv, "--out", str(tmp_path), "--stem", "s", "--num-prompts", "3"]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert (tmp_path / "s.md").exists()
    for w in data["workloads"]:
        assert (tmp_path / f"s-{w['name']}.png").stat().st_size > 10_000
    for run in data["runs"]:
        assert "error" not in run
        with pytest.raises(ProcessLookupError):
            os.killpg(run["server_pid"], 0)  # the whole group is gone
        timed = [p for p in run["passes"] if not p["warmup"]]
        assert [p["rate"] for p in timed] == [r for w in data["workloads"] for r in w["rates"]]
        for p in timed:
            r = p["result"]
            assert r["completed"] == 3 and r["failed"] == 0 and r["request_goodput"] is not None
            assert all(isinstance(r[k], float) for k in PERCENTILE_KEYS), sorted(r)
            assert f"--request-rate {p['rate']} " in p["bench_command"] and f"--seed {p['seed']} " in p["bench_command"]
    return data


@pytest.mark.vllm
def test_cpu_tiny_serving_benchmark(tmp_path, monkeypatch, tiny_llama_dir):
    data = _smoke(tmp_path, monkeypatch, "--preset", "cpu-tiny", "--model", str(tiny_llama_dir), "--rates", "2,4",
                  "--warmup-prompts", "0")
    vanilla, snapkv = data["runs"]
    assert (vanilla["config"], vanilla["prefix_caching"], vanilla["env"]["VLLM_PLUGINS"]) == ("vanilla", True, "")
    assert (snapkv["config"], snapkv["prefix_caching"]) == ("snapkv-10%", True)  # prefix caching stays on with compression
    assert "kvcomp:" not in Path(vanilla["serve_log"]).read_text()  # the plugin was not loaded
    assert "kvcomp: snapkv budget=0.1" in Path(snapkv["serve_log"]).read_text()
    seeds = [p["seed"] for p in vanilla["passes"]]
    assert len(set(seeds)) == 2 and seeds == [p["seed"] for p in snapkv["passes"]]  # own per pass, same per config
    md = (tmp_path / "s.md").read_text()
    assert "| vanilla | on | 2 | 3/3 |" in md and "| snapkv-10% | on | 4 | 3/3 |" in md


@pytest.mark.vllm
def test_shared_prefix_workload_hits_the_prefix_cache_with_and_without_compression(tmp_path, monkeypatch, tiny_llama_dir):
    """Issue 18's workload through `vllm serve`: a 256-token shared prefix, 320 own tokens; vanilla and snapkv
    with the prefix protected (`cache_prefix`) both serve the later requests' prefixes from the cache."""
    data = _smoke(tmp_path, monkeypatch, "--preset", "cpu-tiny", "--model", str(tiny_llama_dir), "--input-len", "320",
                  "--output-len", "8", "--prefix-len", "256", "--rates", "1", "--warmup-prompts", "0", "--configs",
                  "vanilla", "snapkv-protected=snapkv:budget=0.1,cache_prefix=256",
                  "snapkv-nopc=snapkv:budget=0.1,prefix_caching=off")
    hits = {run["config"]: run["passes"][0]["prefix_cache"]["hits"] for run in data["runs"]}
    caching = {run["config"]: run["prefix_caching"] for run in data["runs"]}
    assert caching == {"vanilla": True, "snapkv-protected": True, "snapkv-nopc": False}
    # requests 2 and 3 find the prefix's 256 tokens (8 blocks of 32) that request 1 left
    assert hits["vanilla"] >= 2 * 224 and hits["snapkv-protected"] >= 2 * 224 and hits["snapkv-nopc"] == 0, hits
    assert "## Workload custom: 256 shared + 320 in, 8 out" in (tmp_path / "s.md").read_text()


@pytest.mark.vllm
def test_dummy_weight_path_serves_and_benches_offline(tmp_path, monkeypatch):
    """The GPU presets' model path (config.json + word tokenizer, --load-format dummy) at the tiny shape."""
    data = _smoke(tmp_path, monkeypatch, "--preset", "cpu-dummy", "--configs", "vanilla", "--rates", "4",
                  "--warmup-prompts", "1", "--model-root", str(tmp_path / "models"))
    assert data["model"].endswith("tiny-shape-dummy") and "--load-format dummy" in data["runs"][0]["serve_command"]
    assert data["runs"][0]["passes"][0]["warmup"] and "result" in data["runs"][0]["passes"][0]


def test_vllm_command_falls_back_to_vllms_cli_module_without_the_console_script(tmp_path, monkeypatch):
    from kvcomp_vllm.testing.server import vllm_command

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert vllm_command() == [str(tmp_path / "python3"), "-m", "vllm.entrypoints.cli.main"]
    (tmp_path / "vllm").write_text("#!/bin/sh\n")
    assert vllm_command() == [str(tmp_path / "vllm")]
