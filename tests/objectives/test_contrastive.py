"""The shared contrastive loss against a plain re-statement of DESIGN §1.2's formula."""

import math

import torch
import torch.nn.functional as F

from scl_cli.objectives.contrastive import symmetric_contrastive_loss


def reference(a, b, t):
    """L = -mean_i log softmax(S/t)_ii - mean_j log softmax(S^T/t)_jj, written out with loops."""
    n = a.shape[0]
    S = [[float(a[i] @ b[j]) / t for j in range(n)] for i in range(n)]
    row = sum(-(S[i][i] - math.log(sum(math.exp(S[i][k]) for k in range(n)))) for i in range(n)) / n
    col = sum(-(S[j][j] - math.log(sum(math.exp(S[k][j]) for k in range(n)))) for j in range(n)) / n
    return row + col


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def test_matches_formula():
    a, b = unit(5, 8, 0), unit(5, 8, 1)
    for t in (0.07, 0.03, 1.0):
        got = symmetric_contrastive_loss(a, b, t)
        assert abs(float(got) - reference(a, b, t)) < 1e-9


def test_learnable_temperature_gets_gradient():
    a, b = unit(4, 6, 2), unit(4, 6, 3)
    t = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    symmetric_contrastive_loss(a, b, t).backward()
    assert t.grad is not None and t.grad != 0


def test_valid_rows_equal_loss_on_the_valid_subset():
    a, b = unit(6, 8, 4), unit(6, 8, 5)
    valid = torch.tensor([True, False, True, True, False, True])
    got = symmetric_contrastive_loss(a, b, 0.1, valid=valid)
    want = reference(a[valid], b[valid], 0.1)
    assert abs(float(got) - want) < 1e-9


def test_detached_targets_carry_no_gradient():
    a = unit(4, 8, 6).requires_grad_(True)
    target = unit(4, 8, 7).requires_grad_(True)
    symmetric_contrastive_loss(a, target.detach(), 0.03).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert target.grad is None


def test_extra_candidates_are_negatives_of_the_first_side_only():
    a, b, extra = unit(4, 8, 8), unit(4, 8, 9), unit(4, 8, 10)
    t, n = 0.1, 4
    got = symmetric_contrastive_loss(a, b, t, extra_b=extra)
    S = [[float(a[i] @ c) / t for c in torch.cat([b, extra])] for i in range(n)]
    row = sum(-(S[i][i] - math.log(sum(math.exp(x) for x in S[i]))) for i in range(n)) / n
    Sb = [[float(b[j] @ a[k]) / t for k in range(n)] for j in range(n)]
    col = sum(-(Sb[j][j] - math.log(sum(math.exp(x) for x in Sb[j]))) for j in range(n)) / n
    assert abs(float(got) - (row + col)) < 1e-9
    valid = torch.tensor([True, False, True, True])
    masked = symmetric_contrastive_loss(a, b, t, valid=valid, extra_b=extra)
    keep = valid.nonzero().flatten()
    subset = symmetric_contrastive_loss(a[keep], b[keep], t, extra_b=extra[keep])
    assert abs(float(masked) - float(subset)) < 1e-9
