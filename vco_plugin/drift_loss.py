"""Ingredient 3: the perceptual-drifting hybrid loss (V-Co, arXiv 2603.16792; the released formula:
docs/official-code.md#hybrid-loss).

For a group of N samples of one class with embeddings ``f`` (of the predicted clean images x̂) and
``f_pos`` (of the paired real images), each of shape (N, D):

    s_i  = exp(-|f_i - f+_i|^2 / tau_g)                         gate
    A_i  = s_i (f+_i - f_i)                                     attraction to the paired image
    k_ij = exp(-|f_i - f_j|^2 / tau_r),  k_ii = 0
    a_ij = k_ij / max(sum_j k_ij, 1e-8)
    R_i  = (1 - s_i) (sum_j a_ij f_j - f_i)                     repulsion from the group's mean
    V_i  = A_i - R_i                  (N < 2: V_i = A_i, attraction only, still gated)
    L_G  = mean_{i,d} (f_i - sg(f_i + V_i))^2                   value mean(V^2), gradient -2 V / (N D)

The hybrid loss is the unweighted mean of L_G over the classes present in the local batch (groups
by true label; dropped samples keep theirs). All numerics are fp32 with autocast off.
"""
from __future__ import annotations

import torch

GATE_TAU = 10.0
REPULSION_TAU = 0.2
_EPS = 1e-8


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float32 else x


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, computed directly (no |a|^2 + |b|^2 - 2ab cancellation)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def _drift(f: torch.Tensor, f_pos: torch.Tensor, same: torch.Tensor, gate_tau: float,
           repulsion_tau: float) -> torch.Tensor:
    """V for every sample, where ``same`` (N, N) bool says which samples share a group."""
    f, f_pos = _fp32(f.detach()), _fp32(f_pos.detach())
    n = f.shape[0]
    s = torch.exp(-(f - f_pos).pow(2).sum(1, keepdim=True) / gate_tau)                  # (N, 1)
    attraction = s * (f_pos - f)
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    k = torch.exp(-_sqdist(f, f) / repulsion_tau) * (same & ~eye)
    a = k / k.sum(1, keepdim=True).clamp_min(_EPS)
    repulsion = (1 - s) * (a @ f - f)
    alone = same.sum(1, keepdim=True) < 2                                                # N < 2 fallback
    return attraction - torch.where(alone, torch.zeros_like(repulsion), repulsion)


def drift_field(f: torch.Tensor, f_pos: torch.Tensor, gate_tau: float = GATE_TAU,
                repulsion_tau: float = REPULSION_TAU) -> torch.Tensor:
    """The drift V (N, D) of one group (no gradient)."""
    with torch.no_grad(), torch.autocast(f.device.type, enabled=False):
        same = torch.ones(f.shape[0], f.shape[0], dtype=torch.bool, device=f.device)
        return _drift(f, f_pos, same, gate_tau, repulsion_tau)


def group_loss(f: torch.Tensor, f_pos: torch.Tensor, gate_tau: float = GATE_TAU,
               repulsion_tau: float = REPULSION_TAU) -> torch.Tensor:
    """L_G = mean((f - sg(f + V))^2) of one group; gradients flow into ``f`` only."""
    v = drift_field(f, f_pos, gate_tau, repulsion_tau)
    with torch.autocast(f.device.type, enabled=False):
        f = _fp32(f)
        return (f - (f.detach() + v)).pow(2).mean()


def hybrid_loss(f: torch.Tensor, f_pos: torch.Tensor, labels: torch.Tensor, gate_tau: float = GATE_TAU,
                repulsion_tau: float = REPULSION_TAU) -> torch.Tensor:
    """Mean of ``group_loss`` over the label groups of the batch, computed for all groups at once.

    With n_i the size of sample i's group and G = sum_i 1/n_i the number of groups,
    L = (1/G) sum_i |f_i - sg(f_i + V_i)|^2 / (n_i D), with no host synchronisation.
    """
    with torch.autocast(f.device.type, enabled=False):
        f = _fp32(f)
        same = labels.view(-1, 1) == labels.view(1, -1)
        with torch.no_grad():
            v = _drift(f, f_pos, same, gate_tau, repulsion_tau)
            inv_n = 1.0 / same.sum(1).to(f.dtype)
        per_sample = (f - (f.detach() + v)).pow(2).mean(1)
        return (per_sample * inv_n).sum() / inv_n.sum()
