"""The PoD geometry (sink, recent, layer groups) a checkpoint was adapted for, kept beside its config.json.

`pod-adapt` writes `kvcomp_pod.json`; a pod engine serving that folder with another geometry logs a
warning (`mismatch`), since the adapted weights expect the distant keys of the groups they trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import KVPolicyConfig

GEOMETRY_FILE = "kvcomp_pod.json"


def geometry(config: KVPolicyConfig, num_layers: int) -> dict:
    """What decides a pod model's attention: sink, recent and the explicit layer groups."""
    return {"sink": config.sink, "recent": config.recent, "groups": [list(g) for g in config.pod_groups(num_layers)]}


def write_geometry(model_dir: str | Path, config: KVPolicyConfig, num_layers: int, **extra) -> Path:
    """Record `config`'s geometry (and `extra` facts of the training run) in `model_dir`."""
    path = Path(model_dir) / GEOMETRY_FILE
    path.write_text(json.dumps({"geometry": geometry(config, num_layers), **extra}, indent=2) + "\n")
    return path


def read_geometry(model_dir: str | Path) -> dict | None:
    """The geometry a model folder was adapted for, or None where it records none."""
    path = Path(model_dir) / GEOMETRY_FILE
    return json.loads(path.read_text())["geometry"] if path.is_file() else None


def mismatch(model_dir: str | Path, config: KVPolicyConfig, num_layers: int) -> str | None:
    """Why serving `model_dir` with `config` departs from the geometry it was adapted for, or None."""
    trained = read_geometry(model_dir)
    if trained is None:
        return None
    served = geometry(config, num_layers)
    diffs = [f"{k} {served[k]} (adapted for {trained.get(k)})" for k in served if served[k] != trained.get(k)]
    if not diffs:
        return None
    return (
        f"{model_dir} was adapted for pod with sink={trained.get('sink')} recent={trained.get('recent')} "
        f"groups={trained.get('groups')}; served with {'; '.join(diffs)}: quality may drop"
    )
