"""kvcomp-vllm: KV cache compression policies (SnapKV, PyramidKV, WindowKV, PoD) for vLLM serving."""

from .config import POLICY_NAMES, KVPolicyConfig, load_preset

__version__ = "0.1.0"
__all__ = ["POLICY_NAMES", "KVPolicyConfig", "load_preset", "__version__"]
