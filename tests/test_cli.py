"""`kvcomp-vllm doctor | presets`: versions, registration, effective config, preset listing, bad values."""

import pytest
import torch

from kvcomp_vllm.cli import PRESETS, main


def test_doctor_reports_registration_and_effective_config(capsys):
    assert main(["doctor", "--kv-policy", "pyramid", "--kv-budget", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "plugin registered with vLLM: yes (kvcomp_vllm.vllm_integration.plugin:register)" in out
    assert "effective config: pyramid beta=20.0 budget=0.1 pool_size=7 pooling=avg window=32" in out
    assert ("device: cuda" if torch.cuda.is_available() else "device: cpu") in out
    assert "refused with a compressing policy (untested): a quantized KV cache (--kv-cache-dtype), " in out
    assert "pipeline parallelism (--pipeline-parallel-size)" in out and "beam search (use_beam_search" in out
    assert "layers: full-attention layers compressed; a hybrid model's sliding-window layers (Gemma 3, gpt-oss: " \
           "layer_types in its config) kept by vLLM's own manager; refused: chunked local attention, " in out


def test_doctor_names_the_cpu_kv_packing_of_each_dtype(capsys, monkeypatch):
    from kvcomp_vllm import cli
    from kvcomp_vllm.vllm_integration import compat

    if torch.cuda.is_available():
        pytest.skip("the CPU packing is reported on CPU hosts")

    real = compat.cpu_block_tilings

    def unaddressable(isa, dtype, block_size, head_dim):
        if dtype == torch.bfloat16:
            raise ValueError("kvcomp: vLLM's CPU KV cache packing for ISA 'amx' at bfloat16 is not one kvcomp can address")
        return real(isa, dtype, block_size, head_dim)

    monkeypatch.setattr(compat, "cpu_attention_isa", lambda dtype, *_: "amx" if dtype == torch.bfloat16 else "vec")
    monkeypatch.setattr(compat, "cpu_block_tilings", unaddressable)
    assert cli.cpu_packings() == [
        "CPU KV packing at --dtype bfloat16: not served with compression (kvcomp: vLLM's CPU KV cache packing "
        "for ISA 'amx' at bfloat16 is not one kvcomp can address)",
        "CPU KV packing at --dtype float16: vec, addressed",
        "CPU KV packing at --dtype float32: vec, addressed",
    ]


def test_doctor_with_a_preset_and_an_override(capsys):
    assert main(["doctor", "--kv-config", str(PRESETS / "snapkv-2k.yaml"), "--kv-budget", "1024"]) == 0
    assert "effective config: snapkv budget=1024 pool_size=15 pooling=avg window=32" in capsys.readouterr().out


def test_doctor_rejects_bad_values_with_the_validation_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--kv-policy", "snapkv", "--kv-budget", "8", "--kv-window", "32"])
    assert exit_.value.code == 2
    assert "budget: 8 tokens is less than window (32) for policy 'snapkv'" in capsys.readouterr().err


def test_presets_lists_every_yaml_with_its_settings(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "configs/pod-35pct.yaml: pod group_size=4 recent=1024 sink=4" in lines
    assert "configs/snapkv-10pct-shared-prompt.yaml: snapkv budget=0.1 cache_prefix=4096 pool_size=15 pooling=avg window=32" in lines
    assert len(lines) == 5


def test_doctor_says_whether_the_installed_vllm_is_tested(capsys, monkeypatch):
    import vllm

    from kvcomp_vllm.vllm_integration.compat import platform_name

    main(["doctor"])
    assert f"vLLM {vllm.__version__} on {platform_name()}: tested\n" in capsys.readouterr().out
    monkeypatch.setattr(vllm, "__version__", "0.27.1")
    main(["doctor"])
    assert (
        f"vLLM 0.27.1 on {platform_name()}: untested: kvcomp-vllm is tested with vLLM 0.26.x (CUDA) and 0.32.x (CPU)\n"
    ) in capsys.readouterr().out


def test_doctor_lists_the_patched_vllm_internals(capsys):
    from kvcomp_vllm.vllm_integration.compat import PATCHED_INTERNALS

    main(["doctor"])
    out = capsys.readouterr().out.split("patched vLLM internals:\n")[1].splitlines()
    assert len(out) == len(PATCHED_INTERNALS)
    assert "  EngineArgs.add_cli_args: the --kv-* flags [checked on vLLM 0.26.0 (CUDA), 0.32.0 (CPU)]" in out
    assert out[-1] == "  AsyncModelRunnerOutput.get_output: set per output: failures carried once resolved [checked on vLLM 0.26.0 (CUDA)]"


def test_bench_serve_runs_the_serving_benchmark(capfd):
    assert main(["bench", "serve", "--preset", "h200-8b", "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("vanilla: vllm serve MODEL ") and "windowkv-12pct: vllm serve MODEL " in out
