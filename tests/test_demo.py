"""`make demo` as a newcomer runs it: serves at the model's default dtype and answers; a failing server
is reported with the end of its log."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm


def test_demo_answers_at_the_default_dtype(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kvcomp_vllm.demo"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "server: pyramid beta=20.0 budget=0.1" in proc.stdout and "answer: '" in proc.stdout
    assert "dtype=torch.bfloat16" in (tmp_path / ".cache/demo-serve.log").read_text()


def test_a_failing_demo_shows_the_server_log(tmp_path, monkeypatch):
    from kvcomp_vllm import demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "SERVE_ARGS", (*demo.SERVE_ARGS, "--kv-budget", "0"))
    with pytest.raises(SystemExit) as err:
        demo.main()
    message = str(err.value)
    assert message.startswith("demo failed: vllm serve exited with 1 before it was healthy")
    assert "last lines of .cache/demo-serve.log:" in message
    assert "vllm serve: error: invalid kvcomp settings: budget: must be positive" in message
