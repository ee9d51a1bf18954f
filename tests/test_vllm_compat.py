"""compat's declarations: the vLLM minors kvcomp-vllm is tested with (warned about at start-up), and the
table of every vLLM method it patches, which every `patch(...)` call must have a line in."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kvcomp_vllm.vllm_integration import compat, engine_args

INTEGRATION = Path(compat.__file__).parent
UNTESTED = "untested: kvcomp-vllm is tested with vLLM 0.26.x (CUDA) and 0.32.x (CPU)"


@pytest.mark.parametrize(("version", "platform", "tested"), [
    ("0.26.0", "cuda", True), ("0.26.3+cu129", "cuda", True), ("0.32.0", "cpu", True), ("0.32.1+cpu", "cpu", True),
    ("0.27.0", "cuda", False), ("0.32.0", "cuda", False), ("0.26.0", "cpu", False), ("0.320.0", "cpu", False),
    ("0.26.0", "rocm", False),
])
def test_tested_minors_are_one_per_platform(version, platform, tested):
    assert compat.vllm_tested(version, platform) is tested


def test_the_untested_line_names_the_tested_minors(monkeypatch):
    assert compat.UNTESTED_VLLM == UNTESTED
    assert compat.vllm_support() == "tested"  # the installed vLLM of the test suite
    monkeypatch.setattr(compat.vllm, "__version__", "0.31.0")
    assert compat.vllm_support() == UNTESTED


def warnings_at_start_up(monkeypatch, model_dir) -> list[str]:
    """The kvcomp warnings logged while vLLM builds an engine config (no weights load)."""
    from vllm.engine.arg_utils import EngineArgs

    logged: list[str] = []
    monkeypatch.setattr(engine_args.logger, "warning", lambda msg, *args: logged.append(msg % args))
    EngineArgs(model=str(model_dir), dtype="float32", max_model_len=512, block_size=32, enforce_eager=True,
               additional_config={"kvcomp": {"policy": "snapkv", "budget": 64}}).create_engine_config()
    return [line for line in logged if "vLLM" in line]


def test_start_up_warns_once_outside_the_tested_minors(monkeypatch, tiny_llama_dir):
    assert warnings_at_start_up(monkeypatch, tiny_llama_dir) == []
    monkeypatch.setattr(compat.vllm, "__version__", "0.33.0")
    assert warnings_at_start_up(monkeypatch, tiny_llama_dir) == [
        f"kvcomp: vLLM 0.33.0 on {compat.platform_name()} is {UNTESTED}"
    ]


def patch_sites():
    """(where, owner expression, attribute name) of every `patch(...)` call in vllm_integration."""
    for path in sorted(INTEGRATION.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "patch":
                where = f"{path.name}:{node.lineno}"
                assert isinstance(node.args[1], ast.Constant), f"{where}: patch's attribute must be a literal name"
                yield where, node.args[0], node.args[1].value


def test_every_patch_call_has_a_line_in_the_table():
    """A class imported from compat must be listed as `Class.name`; an owner found at run time (a loop over
    request classes, `serve_subcommand()`, `beam_search_owner()`) by a line ending in `.name`."""
    targets = [target for target, _, _ in compat.PATCHED_INTERNALS]
    sites = list(patch_sites())
    assert len(sites) >= 18  # the 18 calls of the hook modules at the time of writing were found (the scheduler is a subclass)
    for where, owner, name in sites:
        if isinstance(owner, ast.Name) and isinstance(getattr(compat, owner.id, None), type):
            assert f"{owner.id}.{name}" in targets, f"{where}: patch({owner.id}, {name!r}) has no line in PATCHED_INTERNALS"
        else:
            assert any(t.endswith(f".{name}") for t in targets), f"{where}: patching {name!r} has no line in PATCHED_INTERNALS"


def test_every_table_line_names_something_the_integration_touches():
    """No stale lines: each target's attribute is named in vllm_integration outside the table."""
    source = "\n".join(p.read_text() for p in INTEGRATION.glob("*.py"))
    table = re.search(r"PATCHED_INTERNALS: .*?\n\)\n", source, re.S).group()
    rest = source.replace(table, "")
    for target, why, checked in compat.PATCHED_INTERNALS:
        assert re.search(rf"\b{re.escape(target.rpartition('.')[2])}\b", rest), f"{target}: nothing in vllm_integration touches it"
        assert why and checked and set(checked) <= set(compat.CHECKED), target
