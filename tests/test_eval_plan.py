"""The eval's plan and its README: variants, context checks, the printed plan, the filler, and the
README's Quality commands run as written (dry runs of all, the smallest one through vLLM)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from kvcomp_vllm.cli import main
from kvcomp_vllm.eval import corpus
from kvcomp_vllm.eval.corpus import load_corpus
from kvcomp_vllm.eval.budgets import parse_budgets
from kvcomp_vllm.eval.plan import Plan, engine_context, fitting_lengths, model_context
from kvcomp_vllm.eval.report import markdown_table, records
from kvcomp_vllm.eval.scores import summarize
from kvcomp_vllm.eval.runner import Setting, grid
from kvcomp_vllm.eval.tasks import Sample
from kvcomp_vllm.eval.variants import Variant, parse_variants

README = Path(__file__).resolve().parents[1] / "README.md"
README_MODEL = "models/smollm2-135m"


def test_variants_parse_into_rows_of_one_grid():
    variants = parse_variants("snapkv-k7=snapkv:pool_size=7; snapkv-k15=snapkv:pool_size=15,pooling=max;"
                              "wk-10=windowkv:group_size=1,budget=10%")
    assert variants == [Variant(name="snapkv-k7", policy="snapkv", params={"pool_size": 7}),
                        Variant(name="snapkv-k15", policy="snapkv", params={"pool_size": 15, "pooling": "max"}),
                        Variant(name="wk-10", policy="windowkv", params={"group_size": 1}, budget=0.1)]
    settings = grid(["streaming"], [0.025, 128], {}, variants)
    assert [s.label for s in settings] == [
        "full", "streaming@2.5%", "streaming@128tok", "snapkv-k7@2.5%", "snapkv-k7@128tok",
        "snapkv-k15@2.5%", "snapkv-k15@128tok", "wk-10@10%"]
    assert settings[5].kvcomp() == {"policy": "snapkv", "budget": 0.025, "pool_size": 15, "pooling": "max"}
    old = grid([], [0.025], {}, parse_variants("snapkv-k15=snapkv:kernel=15,pooling=max"))  # the deprecated name
    assert old[1] == settings[5]
    assert settings[-1].kvcomp() == {"policy": "windowkv", "budget": 0.1, "group_size": 1}


@pytest.mark.parametrize("text, message", [
    ("a=nope", "variant a: policy 'nope': not one of streaming, snapkv, pyramid, windowkv, windowkv-per-head, pod"),
    ("full=snapkv", "variant full: 'full' is the reference, not a variant name"),
    ("a b=snapkv", "variant a b: name 'a b': letters, digits and _.+- only (it names the needle plot's file)"),
    ("p=pod:recent=64", "variant p: pod's `recent` is the budget: pin it with budget=N or sweep it with --budgets"),
    ("a=snapkv;a=pyramid", "variant names repeat: a"),
    ("snapkv", "variant 'snapkv': write NAME=POLICY[:KEY=VALUE,...]"),
    ("k=snapkv:pool_size", "variant k: 'pool_size' is not KEY=VALUE"),
])
def test_bad_variants_say_what_is_wrong(text, message):
    with pytest.raises(ValueError) as err:
        parse_variants(text)
    assert str(err.value) == message


def test_grid_checks_variants_before_any_engine():
    def fails(policies, variants, budgets=(0.1,)):
        with pytest.raises(ValueError) as err:
            grid(policies, list(budgets), {}, parse_variants(variants) if variants else [])
        return str(err.value)

    assert fails([], "k=snapkv:pool_size=4") == "k@10%: pool_size: must be odd so pooling keeps positions centred, got 4"
    assert fails([], "k=snapkv:kernel=4") == "k@10%: kernel: must be odd so pooling keeps positions centred, got 4"
    assert fails([], "k=snapkv:kernel=5,pool_size=7") == (
        "k@10%: kernel, pool_size: both given, with different values (5 and 7); kernel is the deprecated name of "
        "pool_size: give pool_size alone")
    assert fails([], "k=snapkv:bogus=1") == "k@10%: bogus: Extra inputs are not permitted"
    assert fails([], "p=pod:budget=0.1") == "variant p: pod's budget is its `recent`, a token count, not 0.1"
    assert fails(["snapkv"], "snapkv=snapkv:pool_size=15") == (
        "variant names snapkv: already policies of the grid; name them apart")
    assert fails([], "") == "nothing to compare with full KV: give --policies or --variants"


def test_engine_context_says_what_fits():
    assert engine_context([2048, 4096, 8000], 16, 8192) == 8064
    assert engine_context([8150], 16, 8192) == 8192  # the headroom shrinks to the model's context
    assert engine_context([8000], 16, 8192, requested=8192) == 8192
    assert engine_context([2048], 16, None) == 2112
    for lengths, requested, message in [
        ([2048, 4096, 8192], None, "--lengths: the longest prompt (8192 tokens) and its 16 answer tokens need a "
                                   "context of 8208, and the model allows 8192: prompts of up to 8176 tokens fit"),
        ([2048], 9000, "--max-model-len 9000: the model allows 8192"),
        ([8000], 8010, "--max-model-len 8010: the longest prompt (8000 tokens) and its 16 answer tokens need 8016"),
    ]:
        with pytest.raises(ValueError) as err:
            engine_context(lengths, 16, 8192, requested)
        assert str(err.value) == message


def test_lengths_beyond_the_context_are_skipped_with_the_reason():
    assert fitting_lengths([4000, 8000, 16000], 16, 8192) == ([4000, 8000], [
        "length 16000 skipped: it and its 16 answer tokens need a context of 16016, and the model allows 8192"])
    assert fitting_lengths([4000, 8000, 16000], 16, 32768) == ([4000, 8000, 16000], [])
    assert fitting_lengths([4000, 8000], 16, 32768, requested=4096)[1] == [
        "length 8000 skipped: it and its 16 answer tokens need a context of 8016, and --max-model-len is 4096"]
    with pytest.raises(ValueError, match="^--max-model-len 9000: the model allows 8192$"):
        fitting_lengths([4000], 16, 8192, requested=9000)
    with pytest.raises(ValueError) as err:
        fitting_lengths([8192], 16, 8192)
    assert str(err.value) == ("--lengths: none fits; length 8192 skipped: it and its 16 answer tokens need a context "
                              "of 8208, and the model allows 8192: prompts of up to 8176 tokens fit")


def test_budget_sets_and_the_default_grid(tiny_llama_dir, capsys):
    assert parse_budgets("pyramidkv") == [64, 128, 256, 512, 2048]
    assert parse_budgets("ratios,128,pyramidkv") == [0.025, 0.05, 0.1, 0.2, 0.5, 128, 64, 256, 512, 2048]
    with pytest.raises(ValueError, match="budget 'big': not a ratio, a token count or one of the sets ratios, pyramidkv"):
        parse_budgets("big")
    assert main(["eval", "--model", str(tiny_llama_dir), "--dry-run", "--tasks", "needle,passkey", "--depths", "0,1",
                 "--samples", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    # 4000 and 8000 fit the tiny model's 8192; 16000 is skipped. 6 prompts x (1 + 5 x 10 + pod's 5) settings.
    assert out[0] == "grid: 6 prompts x 56 settings = 336 generations"
    every = "2.5%, 5%, 10%, 20%, 50%, 64tok, 128tok, 256tok, 512tok, 2048tok"
    assert [line for line in out if line.startswith("  windowkv")] == [
        f"  windowkv: {every}", f"  windowkv-per-head: {every}"]
    assert "  pod (group_size=2): 64tok, 128tok, 256tok, 512tok, 2048tok" in out
    assert ("  length 16000 skipped: it and its 16 answer tokens need a context of 16016, and the model allows 8192"
            in out)
    assert out[-1].startswith("  time: about 00:") and "(the SmolLM2-135M grid's on one H200;" in out[-1]


def test_samples_auto_sizes_the_grid_for_the_target(tiny_llama_dir, tmp_path, capsys):
    base = ["eval", "--model", str(tiny_llama_dir), "--dry-run", "--tasks", "needle,passkey", "--depths", "0,1",
            "--lengths", "512,1024", "--policies", "snapkv", "--budgets", "0.1"]
    assert main(base + ["--samples", "auto", "--target-ci", "0.1"]) == 0
    out = capsys.readouterr().out.splitlines()
    # passkey: 93 prompts per cell over 2 lengths -> 47 each; needle gets 47 x 2 lengths x 2 depths = 188.
    assert out[:2] == ["grid: 282 prompts x 2 settings = 564 generations",
                       "  prompts (n per cell): needle 188, passkey 94; lengths 512, 1024"]
    assert ("  sizing: a 95% Wilson half-width <= 0.1 needs 93 prompts per cell at p = 0.5 (the worst case): "
            "--samples 47; cells now: needle 188, passkey 94 (--samples 47)") in out
    rows = [dict(setting="full", task="needle", correct=True)] * 9 + [dict(setting="full", task="passkey",
                                                                          correct=c) for c in (True, False)]
    (tmp_path / "results.json").write_text(json.dumps({"records": rows}))
    assert main(base + ["--samples", "2", "--target-ci", "0.1", "--sizing-from", str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "grid: 12 prompts x 2 settings = 24 generations"
    assert (f"    at full KV's shares in {tmp_path / 'results.json'}: needle p=1.00: 16, passkey p=0.50: 93 -> "
            "--samples 47 (full KV's cells only; a policy's share can be nearer 0.5)") in out
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--samples", "auto"])
    assert exit_.value.code == 2
    assert "--samples auto and --sizing-from size the grid for --target-ci: give it" in capsys.readouterr().err


def test_model_context_reads_the_config_as_vllm_does(tmp_path, tiny_llama_dir):
    assert model_context(str(tiny_llama_dir)) == 8192
    config = json.loads((Path(tiny_llama_dir) / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_context(str(tmp_path)) == 32768


def _sample(task, length, depth=None):
    return Sample(task=task, length=length, prompt_ids=(0,) * length, answer="1", depth=depth)


def test_plan_describes_the_grid_and_estimates_its_time():
    samples = [_sample("needle", 1000, d) for d in (0.0, 1.0)] + [_sample("passkey", 3000)]
    settings = grid(["pod"], [0.1, 64, 128], {"pod": {"group_size": 2}}, parse_variants("k15=snapkv:pool_size=15"))
    plan = Plan(samples, settings, "float32", 3064, 8192, "generated")
    assert plan.generations == 18 and plan.engines == 3
    assert plan.describe().splitlines() == [
        "grid: 3 prompts x 6 settings = 18 generations",
        "  prompts (n per cell): needle 2, passkey 1; lengths 1000, 3000",
        "  full: the reference",
        "  pod (group_size=2): 64tok, 128tok",
        "  k15 (snapkv pool_size=15): 10%, 64tok, 128tok",
        "  engines: 3, dtype float32, max_model_len 3064 of the model's 8192",
        "  filler: generated",
    ]
    # 2 s for 1000 tokens; 5000 prompt tokens x 6 settings = 30000 tokens: 60 s.
    assert plan.estimate(2.0, samples[0]) == (
        "first prompt alone (1000 tokens, full KV): 2.0 s; at that rate the 18 generations (30,000 prompt tokens) "
        "take about 01:00, plus 2 more engine starts (batching on a GPU runs faster)")
    rated = Plan(samples, settings, "float32", 3064, 8192, "generated", rate=500.0, skipped=("length 9000 skipped",))
    assert rated.describe().splitlines()[-2:] == [
        "  length 9000 skipped",
        "  time: about 01:00 for 30,000 prompt tokens at 500 per second (--rate; longer prompts and larger models "
        "run slower)"]
    cached = Plan(samples, settings, "float32", 3064, 8192, "generated", kv_cache_gib=2.0)
    assert "  engines: 3, dtype float32, max_model_len 3064 of the model's 8192, KV cache 2 GiB" in cached.describe()
    served = Plan(samples, settings, "float32", 3064, 8192, "generated", server="http://h:8000")
    assert served.engines == 0 and "  server: http://h:8000" in served.describe().splitlines()


def test_variants_are_rows_of_the_summary():
    settings = [Setting("full"), Setting("snapkv", 0.1, (("pool_size", 7),), "k7"), Setting("snapkv", 0.1, (), "k15")]
    samples = [_sample("needle", 10, 0.0), _sample("passkey", 10)]
    texts = {"full": ["1", "1"], "k7@10%": ["1", "2"], "k15@10%": ["1", "1"]}
    rows = records(samples, settings, texts)
    assert [(r["policy"], r["variant"], r["setting"]) for r in rows[2:4]] == [("snapkv", "k7", "k7@10%")] * 2
    assert markdown_table(summarize(rows)).splitlines() == [
        "| policy | 10% |", "| --- | --- |", "| full | 1.000 [1.00, 1.00] (reference, every budget) |",
        "| k15 | 1.000 [1.00, 1.00] · 100% [100, 100] |", "| k7 | 0.500 [0.50, 0.50] · 50% [50, 50] |"]


def test_corpus_is_generated_unless_asked(tmp_path, monkeypatch):
    assert load_corpus()[0] == "generated" and load_corpus(None)[0] == "generated"
    assert load_corpus("generated", 1)[1] == corpus.generated_paragraphs(2000, 1)
    monkeypatch.setattr(corpus, "DEVIL_PATHS", (tmp_path / "devil.dict.dz",))
    with pytest.raises(ValueError) as err:
        load_corpus("devils-dictionary")
    assert str(err.value) == f"--corpus devils-dictionary: {tmp_path / 'devil.dict.dz'} is not there; apt-get install dict-devil"
    (tmp_path / "devil.dict.dz").write_text("A paragraph of the dictionary, long enough to be kept.\n")
    assert load_corpus("devils-dictionary")[0] == "devils-dictionary (Debian dict-devil)"
    with pytest.raises(ValueError) as err:
        load_corpus(tmp_path / "none.txt")
    assert str(err.value) == f"--corpus {tmp_path / 'none.txt'}: not generated or devils-dictionary, and no such file"


def readme_eval_commands(report: bool = False) -> list[list[str]]:
    """Each `kvcomp-vllm eval` run (`report`: each `kvcomp-vllm eval report`) in the README's Quality section,
    split into arguments."""
    text = README.read_text()
    section = text[text.index("## Quality evaluation"):]
    section = section[:section.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)  # environment settings
            if words[:2] == ["kvcomp-vllm", "eval"] and (words[2:3] == ["report"]) == report:
                commands.append(words[1:])
    return commands


def _on_tiny(argv: list[str], model: Path, out: Path) -> list[str]:
    """`argv` with the README's model replaced by `model` and its --out by `out`."""
    assert argv[argv.index("--model") + 1] == README_MODEL
    argv = [str(model) if a == README_MODEL else a for a in argv]
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(out)
    return argv


def test_every_readme_eval_command_plans_on_the_tiny_model(tiny_llama_dir, tmp_path, capsys):
    commands = readme_eval_commands()
    assert len(commands) >= 3
    sizes = []
    for i, argv in enumerate(commands):
        assert main(_on_tiny(argv, tiny_llama_dir, tmp_path / str(i)) + ["--dry-run"]) == 0, argv
        sizes.append(re.search(r"^grid: .* = (\d+) generations$", capsys.readouterr().out, re.M).group(1))
    assert "4320" in sizes  # the grid of the committed H100 and H200 runs
    assert not any(p.exists() for p in tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.vllm
def test_the_readmes_smallest_command_runs_on_the_tiny_model(tiny_llama_dir, tmp_path, capsys):
    commands = readme_eval_commands()
    for argv in commands:
        main(_on_tiny(argv, tiny_llama_dir, tmp_path / "plan") + ["--dry-run"])
    sizes = [int(n) for n in re.findall(r"^grid: .* = (\d+) generations$", capsys.readouterr().out, re.M)]
    smallest = commands[sizes.index(min(sizes))]
    assert main(_on_tiny(smallest, tiny_llama_dir, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert f"grid: 3 prompts x 3 settings = {min(sizes)} generations" in out
    assert re.search(r"^first prompt alone \(2048 tokens, full KV\): \d+\.\d s; at that rate the 9 generations", out, re.M)
    run = json.loads((tmp_path / "run" / "results.json").read_text())["run"]
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    assert (run["corpus"], run["dtype"], run["max_model_len"]) == ("generated", dtype, 2112)
    assert run["settings"] == ["full", "snapkv-k7@10%", "snapkv-k15@10%"]
    table = (tmp_path / "run" / "summary.md").read_text()
    assert "| snapkv-k7 |" in table and "| snapkv-k15 |" in table
    assert (tmp_path / "run" / "needle_snapkv-k15.png").read_bytes()[:4] == b"\x89PNG"
