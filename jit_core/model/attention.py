"""Joint softmax attention over the concatenated tokens of all streams, and its masks.

One softmax over every stream's tokens (V-Co's dual-stream block, arXiv 2603.16792; with the pixel
stream alone it is JiT's attention, arXiv 2511.13720 Sec. 4). Which stream may attend to which is a
``(B, S, S)`` bool matrix ``blocked`` (query stream, key stream), True = masked, e.g. V-Co's structured
unconditional branch (pixel queries of dropped samples do not see feature keys). It reaches the
attention in one of two forms:

- a token mask ``(B, 1, L, L)`` bool, True = may attend (:func:`token_mask`): plain data, built without
  reading tensor values on the host, so a training step neither syncs nor gives ``torch.compile``
  anything to guard on but its shape;
- :class:`StreamGroups`: the samples grouped by their block pattern, so each group runs the fused
  attention kernels without a mask (FlashAttention on CUDA). Grouping reads ``blocked`` on the host
  (one sync), so the sampler builds it once per call, not once per step.

Two numerics (``path``): ``exact`` is the official one (q.k and softmax in fp32 with autocast off);
``fast`` is ``scaled_dot_product_attention`` in the autocast dtype.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F


def token_mask(blocked: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """``(B, S, S)`` stream-level ``blocked`` -> ``(B, 1, L, L)`` bool token mask, True where a query may attend.

    ``lengths``: tokens per stream in concatenation order (in-context tokens belong to their stream).
    Built from S^2 broadcasts, with no host read of ``blocked`` and no host tensor.
    """
    B, S = blocked.shape[0], len(lengths)
    allowed = ~blocked                                                            # (B, S, S)
    rows = [torch.cat([allowed[:, i, j, None, None].expand(B, lengths[i], lengths[j]) for j in range(S)], dim=2)
            for i in range(S)]                                                    # S x (B, L_i, L)
    return torch.cat(rows, dim=1)[:, None]                                        # (B, 1, L, L)


class StreamGroups:
    """A ``(B, S, S)`` block matrix grouped by pattern, for mask-free fused attention.

    Samples with the same pattern form a group. A group without blocked pairs is one plain
    ``scaled_dot_product_attention``; in a group with blocked pairs each query stream attends to the
    concatenation of the key streams it may see. The result equals softmax attention with the token
    mask of :func:`token_mask`. Building reads ``blocked`` on the host (one sync): build it once and
    pass it to every forward that uses the same ``blocked`` (the sampler does, once per call).
    """

    def __init__(self, blocked: torch.Tensor):
        S = blocked.shape[1]
        self.blocked = blocked                                                    # (B, S, S), kept for the exact path
        patterns, group = torch.unique(blocked.flatten(1), dim=0, return_inverse=True)
        self.patterns = tuple(tuple(tuple(row) for row in pat) for pat in patterns.view(-1, S, S).tolist())
        for pat in self.patterns:
            if any(all(row) for row in pat):
                raise ValueError(f"a stream may see no key stream at all (block pattern {pat}): its attention is undefined")
        self.single = len(self.patterns) == 1
        self.indices = [torch.nonzero(group == g).squeeze(1) for g in range(len(self.patterns))]
        self.order = None if self.single else torch.argsort(torch.cat(self.indices))

    def attention(self, q, k, v, lengths: Sequence[int], dropout: float) -> torch.Tensor:
        """q, k, v ``(B, heads, L, d)`` -> ``(B, heads, L, d)``, streams concatenated along L in ``lengths`` order."""
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        outs = []
        for idx, pat in zip(self.indices, self.patterns):
            qg, kg, vg = (q, k, v) if self.single else (q[idx], k[idx], v[idx])   # (B_g, heads, L, d)
            if not any(map(any, pat)):
                outs.append(F.scaled_dot_product_attention(qg, kg, vg, dropout_p=dropout))
                continue
            parts = []
            for i, row in enumerate(pat):
                keep = [j for j, blocked in enumerate(row) if not blocked]
                ks, vs = (torch.cat([x[:, :, starts[j]:starts[j + 1]] for j in keep], dim=2) if len(keep) < len(row) else x
                          for x in (kg, vg))                                       # the key streams query i sees
                parts.append(F.scaled_dot_product_attention(qg[:, :, starts[i]:starts[i + 1]], ks, vs, dropout_p=dropout))
            outs.append(torch.cat(parts, dim=2))
        return outs[0] if self.single else torch.cat(outs)[self.order]           # back in batch order


Mask = Union[None, torch.Tensor, StreamGroups]


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask, path: str, dropout: float,
                    lengths: Sequence[int] = ()) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over ``(B, heads, L, d)`` tensors, streams concatenated along L.

    ``mask``: None (every token sees every token), a ``(B, 1, L, L)`` bool token mask (True = may
    attend), or :class:`StreamGroups` (``fast`` only; ``lengths`` gives the stream boundaries).
    """
    if path == "fast":
        q, k = q.to(v.dtype), k.to(v.dtype)          # q/k-norm runs in fp32; SDPA wants one dtype
        if isinstance(mask, StreamGroups):
            return mask.attention(q, k, v, lengths, dropout)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    if isinstance(mask, StreamGroups):
        raise TypeError("the exact attention path takes a token mask, not StreamGroups")
    return exact_attention(q, k, v, mask, dropout)


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                    dropout: float) -> torch.Tensor:
    """The official numerics: q.k logits and softmax in fp32 with autocast off, then the product with v
    under autocast (bf16 when on). A masked logit is -inf, as the official additive 0 / -inf bias gives."""
    autocast = torch.amp.is_autocast_available(q.device.type) and torch.is_autocast_enabled(q.device.type)
    with torch.autocast(q.device.type, enabled=False) if autocast else contextlib.nullcontext():
        logits = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5    # (B, heads, L, L)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v if autocast else probs.to(v.dtype) @ v
