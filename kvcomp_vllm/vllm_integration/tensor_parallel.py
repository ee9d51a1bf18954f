"""Tensor parallelism: ranks decide as one device holding all KV heads would, and fail what any rank fails.

vLLM's tensor-parallel ranks each hold a contiguous slice of a layer's KV heads (where the model has
fewer KV heads than ranks, each head on `replicas` consecutive ranks) and run the same scheduler output,
so they track the same requests, rows and compression points and compact their own heads. Two things
could still set them apart: a selection rule spanning heads (`HeadExchange` gathers every head's
`Selector.head_statistics` before `select`), and a failure on one rank (`failed_anywhere`, at the end
of each step, makes it every rank's, so the output rank reports it and the request finishes as an error).

Collectives run in an order each rank derives from host facts of the step only (which rows compress,
which layers gather), never from a local result: a rank whose work for a request failed still takes part
(`HeadExchange.stand_in`), its header says so, and every rank then fails the request at that layer.
Headers and failure flags travel on the group's CPU (gloo) group, so they add no device sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

NONE, OK, FAILED = 0, 1, 2  # a rank's header: no statistics for this layer, statistics follow, failed


class HeadsFailed(RuntimeError):
    """Some rank could not give its head statistics for a request's layer: every rank fails the request."""


@dataclass(frozen=True)
class TPGroup:
    """The ranks a layer's KV heads are split over, and how to reach them."""

    size: int
    cpu_group: object  # a gloo ProcessGroup: headers and failure flags
    all_gather: Callable[[torch.Tensor], torch.Tensor]  # every rank's device rows, stacked in rank order
    replicas: int = 1  # consecutive ranks holding each KV head (model KV heads < ranks)

    @classmethod
    def of(cls, coordinator, total_kv_heads: int) -> TPGroup | None:
        """From vLLM's `GroupCoordinator` of the tensor-parallel group; None for a single rank."""
        if coordinator is None or coordinator.world_size == 1:
            return None
        replicas = max(1, coordinator.world_size // total_kv_heads)
        return cls(coordinator.world_size, coordinator.cpu_group, lambda t: coordinator.all_gather(t, dim=0), replicas)


def exchange(group: TPGroup, stats: torch.Tensor | None, failed: bool = False) -> torch.Tensor | None:
    """Every KV head's rows, in head order, from each rank's `stats` `[local_heads, width]` (None: none needed).

    Raises `HeadsFailed` on every rank alike when any rank failed or the ranks' shapes disagree.
    """
    status = FAILED if failed else NONE if stats is None else OK
    shape = (0, 0) if status != OK else tuple(stats.shape)
    header = torch.tensor([status, *shape], dtype=torch.int64)
    headers = [torch.empty_like(header) for _ in range(group.size)]
    dist.all_gather(headers, header, group=group.cpu_group)
    table = torch.stack(headers)
    if bool((table[:, 0] == FAILED).any()):
        raise HeadsFailed(f"ranks {(table[:, 0] == FAILED).nonzero().flatten().tolist()} failed this layer's scoring")
    if bool((table[:, 0] == NONE).all()):
        return None
    if not bool((table == table[0]).all()):
        raise HeadsFailed(f"ranks disagree on this layer's head statistics: {table.tolist()}")
    return group.all_gather(stats.contiguous())[:: group.replicas]


class HeadExchange:
    """One request-layer's gather of head statistics: the compressor calls it once, or, where this
    rank's work for the request failed before that, `stand_in` takes part in its place."""

    def __init__(self, group: TPGroup):
        self.group = group
        self.done = False

    def __call__(self, stats: torch.Tensor | None) -> torch.Tensor | None:
        self.done = True
        return exchange(self.group, stats)

    def stand_in(self) -> None:
        """Tell the other ranks this rank failed the request (once, and only if the gather has not run)."""
        if not self.done:
            self.done = True
            try:
                exchange(self.group, None, failed=True)
            except HeadsFailed:
                pass


def failed_anywhere(group: TPGroup, req_ids: list[str], failed_here: set[str]) -> list[str]:
    """Those of `req_ids` (the step's rows, the same list on every rank) that failed on some rank."""
    flags = torch.tensor([req_id in failed_here for req_id in req_ids], dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group.cpu_group)
    return [req_id for req_id, flag in zip(req_ids, flags.tolist()) if flag]
