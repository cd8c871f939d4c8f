"""The perceptual-drifting hybrid loss against hand-computed values (docs/official-code.md#hybrid-loss)."""
from __future__ import annotations

import math

import pytest
import torch

from vco_plugin.drift_loss import drift_field, group_loss, hybrid_loss


def _hand_drift(f, fp, gate_tau=10.0, repulsion_tau=0.2):
    """Scalar re-statement of the released formula (docs/official-code.md), in plain Python floats."""
    n, d = len(f), len(f[0])

    def sq(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))

    out = []
    for i in range(n):
        s = math.exp(-sq(f[i], fp[i]) / gate_tau)
        attract = [s * (fp[i][k] - f[i][k]) for k in range(d)]
        if n < 2:
            out.append(attract)
            continue
        kern = [0.0 if j == i else math.exp(-sq(f[i], f[j]) / repulsion_tau) for j in range(n)]
        z = max(sum(kern), 1e-8)
        mean = [sum(kern[j] / z * f[j][k] for j in range(n)) for k in range(d)]
        repel = [(1 - s) * (mean[k] - f[i][k]) for k in range(d)]
        out.append([attract[k] - repel[k] for k in range(d)])
    return out


F2 = [[1.0, 0.0], [0.0, 1.0]]
P2 = [[0.6, 0.8], [0.8, 0.6]]


def test_two_sample_group_by_hand():
    # N = 2, D = 2: the repulsion weight of the only other sample is exactly 1.
    s1 = math.exp(-((1 - 0.6) ** 2 + 0.8 ** 2) / 10)
    v1 = [s1 * (0.6 - 1) - (1 - s1) * (0 - 1), s1 * (0.8 - 0) - (1 - s1) * (1 - 0)]
    assert _hand_drift(F2, P2)[0] == pytest.approx(v1)
    v = drift_field(torch.tensor(F2), torch.tensor(P2))
    assert torch.allclose(v, torch.tensor(_hand_drift(F2, P2)), atol=1e-6)
    assert v[0].tolist() == pytest.approx(v1, abs=1e-6)
    assert group_loss(torch.tensor(F2), torch.tensor(P2)).item() == pytest.approx((v ** 2).mean().item(), rel=1e-6)


def test_three_samples_in_3d_weights_normalised():
    f = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]
    fp = [[0.0, 0.0, 1.0], [0.0, 0.6, 0.8], [0.6, 0.0, 0.8]]
    v = drift_field(torch.tensor(f), torch.tensor(fp))
    assert torch.allclose(v, torch.tensor(_hand_drift(f, fp)), atol=1e-6)
    expected = sum(x ** 2 for row in _hand_drift(f, fp) for x in row) / 9
    assert group_loss(torch.tensor(f), torch.tensor(fp)).item() == pytest.approx(expected, rel=1e-5)


def test_singleton_group_is_gated_attraction_only():
    f, fp = [[0.6, 0.8]], [[1.0, 0.0]]
    s = math.exp(-(0.4 ** 2 + 0.8 ** 2) / 10)
    v = drift_field(torch.tensor(f), torch.tensor(fp))
    assert v[0].tolist() == pytest.approx([s * 0.4, s * -0.8], abs=1e-7)
    assert group_loss(torch.tensor(f), torch.tensor(fp)).item() == pytest.approx(
        ((s * 0.4) ** 2 + (s * 0.8) ** 2) / 2, rel=1e-6)


def test_hybrid_is_unweighted_mean_over_groups():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    fp = torch.tensor([[0.6, 0.8], [0.8, 0.6], [1.0, 0.0]])
    labels = torch.tensor([3, 3, 7])
    g0 = sum(x ** 2 for row in _hand_drift(F2, P2) for x in row) / 4
    g1 = sum(x ** 2 for row in _hand_drift([[0.6, 0.8]], [[1.0, 0.0]]) for x in row) / 2
    assert hybrid_loss(f, fp, labels).item() == pytest.approx((g0 + g1) / 2, rel=1e-6)
    # group order and sample order do not matter
    perm = torch.tensor([2, 0, 1])
    assert hybrid_loss(f[perm], fp[perm], labels[perm]).item() == pytest.approx((g0 + g1) / 2, rel=1e-6)
    # one group = group_loss
    assert hybrid_loss(f[:2], fp[:2], labels[:2]).item() == pytest.approx(group_loss(f[:2], fp[:2]).item(), rel=1e-6)


def test_gradient_is_minus_two_v_over_nd():
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(5, 8), dim=1).requires_grad_(True)
    fp = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    group_loss(f, fp).backward()
    v = drift_field(f.detach(), fp)
    assert torch.allclose(f.grad, -2 * v / (5 * 8), atol=1e-7)

    # hybrid: sample i of group g gets -2 V_i / (n_g D G)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    f6 = torch.nn.functional.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    fp6 = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    hybrid_loss(f6, fp6, labels).backward()
    expected = torch.zeros(6, 4)
    for idx in ([0, 1, 2], [3, 4], [5]):
        expected[idx] = -2 * drift_field(f6.detach()[idx], fp6[idx]) / (len(idx) * 4 * 3)
    assert torch.allclose(f6.grad, expected, atol=1e-7)


def test_fp32_numerics_and_no_grad_to_positive():
    f = torch.tensor(F2, dtype=torch.bfloat16, requires_grad=True)
    fp = torch.tensor(P2, requires_grad=True)
    loss = hybrid_loss(f, fp, torch.tensor([0, 0]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert fp.grad is None and f.grad is not None
