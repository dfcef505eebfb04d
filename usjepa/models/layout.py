"""Which slots of a padded batch of token sequences are real: decided on the host, once per forward.

A `TokenLayout` is built by the model that assembles a sequence batch (the encoder from the student's context,
the predictor from context + target tokens) out of the per-row lengths the mask collator computed on the CPU,
and is handed to every block. Nothing in it reads a device tensor back to the host: whether the batch is dense
(every slot real: the unmasked kernels run), the xformers block-diagonal lengths and the number of real tokens
all come from host integers; the device mask is only combined and sorted on the device.

Reference masks (truncated to the batch minimum) have no padding at all, so their layouts are dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Segment:
    """`slots` consecutive token slots of every sequence; `valid` [S, slots] bool on the device marks the real
    ones and `lengths` [S] (host integers) counts them. Both None: every slot is real. A CPU mask may come alone
    (its counts are read on the host); a mask on an accelerator must bring its lengths."""

    slots: int
    valid: Tensor | None = None
    lengths: Sequence[int] | np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.valid is not None and self.lengths is None:
            if self.valid.device.type != "cpu":  # counting them here would read the device back to the host
                raise ValueError(f"padding on {self.valid.device} needs its host lengths beside the mask: a MaskBatch "
                                 "carries both (context_valid + context_lengths, targets_valid + targets_lengths)")
            self.lengths = self.valid.sum(-1).numpy()  # a CPU mask is host memory already
        if self.valid is None and self.lengths is not None:
            raise ValueError("segment lengths were given without the mask of real slots (valid)")


class TokenLayout:
    """A batch of S sequences padded to L slots. `dense` (valid is None): every slot is real.

    Otherwise `valid` [S, L] bool lives on the device (SDPA / math masks) and `seqlens` (host ints) gives each
    sequence's real-token count (xformers' block-diagonal packing); the pack index and the xformers bias are
    made on first use and shared by every block of the forward.
    """

    def __init__(self, valid: Tensor | None = None, seqlens: Sequence[int] | None = None):
        if (valid is None) != (seqlens is None):
            raise ValueError("TokenLayout needs both valid and seqlens, or neither (dense)")
        if valid is not None and valid.shape[0] != len(seqlens):
            raise ValueError(f"valid has {valid.shape[0]} rows but seqlens has {len(seqlens)} entries")
        self.valid = valid
        self.seqlens = None if seqlens is None else [int(n) for n in seqlens]
        self._pack: Tensor | None = None
        self._bias = None

    @property
    def dense(self) -> bool:
        return self.valid is None

    @property
    def num_real(self) -> int:
        return sum(self.seqlens) if self.seqlens is not None else -1

    @classmethod
    @torch.compiler.disable  # numpy on host lengths: kept out of compiled graphs
    def from_segments(cls, segments: Sequence[Segment], num_seqs: int, device) -> TokenLayout:
        """Sequences made of `segments` side by side -> their layout; dense when no segment is padded."""
        lengths = np.zeros(num_seqs, dtype=np.int64)
        padded = False
        for seg in segments:
            if seg.lengths is None:
                lengths += seg.slots
                continue
            seg_len = np.asarray(seg.lengths, dtype=np.int64).reshape(-1)
            if seg_len.shape[0] != num_seqs:
                raise ValueError(f"a segment has {seg_len.shape[0]} lengths for {num_seqs} sequences")
            padded = padded or bool((seg_len < seg.slots).any())
            lengths += seg_len
        if not padded:
            return cls()
        parts = [seg.valid.to(device=device, dtype=torch.bool) if seg.valid is not None
                 else torch.ones(num_seqs, seg.slots, dtype=torch.bool, device=device) for seg in segments]
        return cls(torch.cat(parts, dim=1), lengths.tolist())  # [S, L]

    @classmethod
    def from_valid(cls, valid: Tensor | None) -> TokenLayout:
        """From a [S, L] bool mask alone. Reads its row counts back to the host (a device sync on a GPU): for tests
        and one-off calls; the training path builds layouts from the collator's host lengths instead."""
        if valid is None:
            return cls()
        seqlens = valid.sum(1).cpu().tolist()
        if all(n == valid.shape[1] for n in seqlens):
            return cls()
        return cls(valid, seqlens)

    @torch.compiler.disable  # host-side bookkeeping: runs eagerly under torch.compile (no tracing of the cache)
    def pack_index(self) -> Tensor:
        """[num_real] positions of the real slots in the flattened [S * L] batch, in order (no host sync: a stable
        sort puts the real slots first and the host knows how many there are)."""
        if self._pack is None:
            pad = (~self.valid).reshape(-1).to(torch.uint8)
            self._pack = torch.sort(pad, stable=True).indices[: self.num_real]
        return self._pack

    @torch.compiler.disable
    def block_diagonal_bias(self, xops, device):
        """xformers' BlockDiagonalMask for the packed real tokens (built once, reused by every block)."""
        if self._bias is None:
            mask_cls = xops.fmha.attn_bias.BlockDiagonalMask
            try:
                self._bias = mask_cls.from_seqlens(self.seqlens, device=device)
            except TypeError:  # xformers before the `device` argument: the bias moves its offsets on first use
                self._bias = mask_cls.from_seqlens(self.seqlens)
        return self._bias


def as_layout(layout) -> TokenLayout | None:
    """None or a TokenLayout; a bare bool mask is refused with the way to build a layout from it."""
    if layout is None or isinstance(layout, TokenLayout):
        return layout
    if isinstance(layout, Tensor):
        raise TypeError("attention takes a TokenLayout, not a bool mask: use TokenLayout.from_valid(valid) "
                        "(one host sync) or TokenLayout.from_segments(...) with host lengths")
    raise TypeError(f"expected a TokenLayout or None, got {type(layout).__name__}")
