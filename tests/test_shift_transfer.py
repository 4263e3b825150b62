"""Shift transfer (passes/translation.py): parameters that add a shift c at every position of
the same sum can pass c between them (LAWS.md §3.5's translation, one direction spread over
several parameters). Found by the completeness count (fxcons.completeness) on a one-layer
Transformer: tok + 1cᵀ, pos − 1cᵀ leaves tok(ids) + pos unchanged."""
from __future__ import annotations

import torch
from torch import nn

import fxcons


class TwoBiases(nn.Module):
    def __init__(self, sign: float = 1.0, leak: bool = False):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(5, 4), nn.Linear(4, 2)
        self.sign, self.leak = sign, leak

    def forward(self, x, y):
        u = self.a(x)
        s = u + self.b(y) if self.sign > 0 else u - self.b(y)
        out = self.head(torch.relu(s))
        return (out, u) if self.leak else out


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=g), torch.randn(6, 5, generator=g)


def shift_families(ann):
    return [f for f in ann.families if f.name.endswith("shift translation[4]") or "↔" in f.name]


def test_two_linear_biases_summed_transfer_a_shift():
    m = TwoBiases()
    ann = fxcons.annotate(m, _inputs())
    (fam,) = shift_families(ann)
    assert fam.kind == "translation" and fam.exactness == "exact" and fam.count == 4
    torch.testing.assert_close(ann.evaluate(m)[fam.name], (m.a.bias - m.b.bias).detach())
    rep = ann.verify(probes=2)
    assert rep.ok and rep.max_ratio_exact < 1e-10


def test_a_subtracted_bias_transfers_with_the_opposite_sign():
    m = TwoBiases(sign=-1.0)
    ann = fxcons.annotate(m, _inputs())
    (fam,) = shift_families(ann)
    torch.testing.assert_close(ann.evaluate(m)[fam.name], (m.a.bias + m.b.bias).detach())
    assert ann.verify(probes=2).ok


def test_no_transfer_when_a_source_is_also_read_elsewhere():
    ann = fxcons.annotate(TwoBiases(leak=True), _inputs())  # a's output is also a model output
    assert shift_families(ann) == []


class Embeds(nn.Module):
    def __init__(self, padding_idx=None):
        super().__init__()
        self.tok = nn.Embedding(7, 4, padding_idx=padding_idx)
        self.pos = nn.Parameter(torch.randn(5, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(torch.relu(self.tok(ids) + self.pos))


def test_token_and_position_embeddings_transfer_a_shift():
    m = Embeds()
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    ann = fxcons.annotate(m, (ids,))
    (fam,) = shift_families(ann)
    torch.testing.assert_close(ann.evaluate(m)[fam.name], (m.tok.weight.sum(0) - m.pos.sum(0)).detach())
    assert ann.verify(probes=2).ok


def test_padding_idx_blocks_the_transfer():
    """The lookup gives the padding row no gradient: shifting every row is not seen by autograd
    as a symmetry of the loss any more (the padding positions' share is missing)."""
    ids = torch.tensor([[0, 1, 2, 3, 0]] * 3)
    ann = fxcons.annotate(Embeds(padding_idx=0), (ids,))
    assert shift_families(ann) == []
    m = Embeds(padding_idx=0).double()
    out = m(ids)
    gt, gp = torch.autograd.grad((out * torch.randn_like(out)).sum(), [m.tok.weight, m.pos])
    assert (gt.sum(0) - gp.sum(0)).abs().max() > 1e-3   # the would-be law is not conserved


def test_a_shift_law_does_not_remove_squares_from_quadratic_laws():
    """Regression: the shift law's terms are per-entry index sets, not 'every entry is a law';
    the stream scale law of a Transformer must keep the embeddings' squares."""
    from fxcons.models import REGISTRY

    model, x = REGISTRY["tiny_transformer"](vocab=5, seq_len=4, dim=4, heads=2, ff=6, layers=1, num_classes=3)
    ann = fxcons.annotate(model, x)
    (scale,) = [f for f in ann.families if f.kind == "scale"]
    assert {"tok.weight", "pos"} <= set(scale.params)
    rep = ann.verify(probes=2)
    assert rep.ok and rep.invariance is not None and rep.invariance < 1e-8
