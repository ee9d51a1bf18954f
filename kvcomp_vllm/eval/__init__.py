"""Answer-quality evaluation: long-context tasks scored per policy and KV budget against full KV.

`tasks/` builds seeded prompts of exact token lengths over natural filler text (`corpus.py`),
`scoring.py` checks answers, `runner.py` runs a suite through vLLM (offline engine or a server URL),
`report.py` writes JSON/CSV and `plots.py` the PNG plots. `kvcomp-vllm eval` is the command line.
"""

from .scoring import check_answer
from .tasks import TASKS, Sample, build_suite

__all__ = ["TASKS", "Sample", "build_suite", "check_answer"]
