"""PoD member decode inputs in per-runner buffers, so member layers attend once and inside full CUDA graphs.

A member layer's decode rows attend only through `kvcomp_kernels.paged_decode` (proximal keys from its
own cache, distant keys from its owner's, its own values). Each step, before the forward, the host writes
every batch row's `paged_decode` layout and whether the row decodes so into two device buffers of fixed
address (`fill`); the attention impl reads them without a host sync, with a grid fixed by the row count,
so the same launch runs eagerly and replays in a full CUDA graph. vLLM's own attention still runs for
the other rows of the batch; for the selected ones its builder bounds `seq_lens` to one key past the
common prefix (`short_seq_lens`), and their output is replaced, not kept.
"""

from __future__ import annotations

import numpy as np
import torch

IDLE_ROW = (1, 1, 0, 0)  # layout of a row that is not selected: one key, read and dropped


class MemberDecode:
    """One runner's member-decode buffers: `layout` `[rows, 4]` int32 and `selected` `[rows]` bool.

    `layers` are the server policy's member layers (PoD is engine-wide, so every request shares them),
    `owners` each one's owner layer, `tier` their KV cache tier; `max_len` bounds any row's length
    (the model's context): a captured graph's grid is sized by it.
    """

    def __init__(self, layers: dict[int, int], tier: int, rows: int, max_len: int, device):
        self.owners = layers
        self.tier = tier
        self.max_len = max_len
        self.layout = torch.tensor([IDLE_ROW] * rows, dtype=torch.int32, device=device)
        self.selected = torch.zeros(rows, dtype=torch.bool, device=device)
        self._filled = 0  # rows written by the last fill: the rest already hold IDLE_ROW, unselected

    @classmethod
    def for_policy(cls, policy, rows: int, max_len: int, device) -> MemberDecode | None:
        """Buffers for a PoD server policy, None for any other."""
        owner = getattr(policy.layout, "owner_layer", None)
        if owner is None:
            return None
        layers = {layer: owner(layer) for layer in range(policy.num_layers) if owner(layer) != layer}
        if not layers:
            return None
        return cls(layers, policy.layout.budget_tier(next(iter(layers))), rows, max_len, device)

    @property
    def capacity(self) -> int:
        return self.selected.shape[0]

    def fill(self, rows: dict[int, list[int]]) -> None:
        """Write this step's selected rows (batch row -> layout) and clear the rows the last step selected.

        The copies are queued on the stream, after the kernels of earlier steps that read the buffers.
        """
        upto = max(self._filled, 1 + max(rows, default=-1))
        if not upto:
            return
        layout = np.tile(np.array(IDLE_ROW, dtype=np.int32), (upto, 1))
        selected = np.zeros(upto, dtype=np.bool_)
        for row, values in rows.items():
            layout[row] = values
            selected[row] = True
        self.layout[:upto].copy_(torch.from_numpy(layout), non_blocking=True)
        self.selected[:upto].copy_(torch.from_numpy(selected), non_blocking=True)
        self._filled = 1 + max(rows, default=-1)


def short_seq_lens(seq_lens: torch.Tensor, selected: torch.Tensor, common_prefix_len: int) -> torch.Tensor:
    """`seq_lens` with the selected rows cut to one key past the common prefix (cascade attention
    subtracts it), in place: vLLM's attention over them is then trivial and its output replaced."""
    rows = seq_lens.shape[0]
    cut = torch.where(selected[:rows], seq_lens.clamp(max=common_prefix_len + 1), seq_lens)
    return seq_lens.copy_(cut)
