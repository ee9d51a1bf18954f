"""The GPU test files, which CI cannot run, name nothing undefined (a missing import failed six GPU tests once)."""

from __future__ import annotations

import builtins
import symtable
from pathlib import Path

import pytest

GPU_TESTS = sorted(Path(__file__).parent.glob("test_gpu_*.py")) + [Path(__file__).parent / "test_kernels.py"]


def undefined_globals(source: str, filename: str) -> set[str]:
    """Names a function reads as globals that the module neither defines, imports nor gets from builtins."""
    module = symtable.symtable(source, filename, "exec")
    defined = {s.get_name() for s in module.get_symbols() if s.is_assigned() or s.is_imported()} | set(dir(builtins))
    missing: set[str] = set()
    tables = list(module.get_children())
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        missing |= {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()} - defined
    return missing


@pytest.mark.parametrize("path", GPU_TESTS, ids=lambda p: p.name)
def test_gpu_test_file_names_nothing_undefined(path):
    assert undefined_globals(path.read_text(), str(path)) == set()


def test_an_undefined_name_is_found():
    assert undefined_globals("import os\n\ndef f():\n    return os.sep, count_prefix_cache(1)\n", "x.py") == {"count_prefix_cache"}
