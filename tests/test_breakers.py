"""LAWS.md §3.7: what must never produce a law. Each negative case pairs with a positive twin
(the same model with ReLU) so the test fails if the breaker stops being seen."""
import pytest
import torch
from torch import nn

import fxcons

BREAKERS = [nn.GELU(), nn.SiLU(), nn.Tanh(), nn.Sigmoid(), nn.Softplus(), nn.ELU(), nn.Mish(),
            nn.Hardswish(), nn.Hardsigmoid(), nn.ReLU6(), nn.Hardtanh()]


def mlp(act):
    return nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2))


@pytest.mark.parametrize("act", BREAKERS, ids=lambda a: type(a).__name__)
def test_non_homogeneous_activation_has_no_rescale_law(act):
    ann = fxcons.annotate(mlp(act), (torch.randn(5, 3),))
    assert ann.total_laws == 0
    assert ann.breakers and type(act).__name__ in ann.breakers[0].why


def test_relu_twin_has_the_law():
    ann = fxcons.annotate(mlp(nn.ReLU()), (torch.randn(5, 3),))
    assert ann.total_laws == 4 and ann.verify(probes=1).ok


def test_leaky_relu_and_functional_spellings_rescale():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            x = nn.functional.leaky_relu(self.a(x), 0.1)
            x = self.b(x).relu()
            return self.c(torch.nn.functional.dropout(x, 0.5, training=True))

    ann = fxcons.annotate(M(), (torch.randn(5, 3),))
    assert ann.counts()["rescale"] == 8
    assert ann.verify(probes=2).ok


def test_bias_after_activation_breaks_rescaling():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(3, 4), nn.Linear(4, 2)
            self.shift = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return self.c(torch.relu(self.a(x)) + 1.0)

    ann = fxcons.annotate(M(), (torch.randn(5, 3),))
    assert ann.counts()["rescale"] == 0


def test_unit_that_reaches_the_output_has_no_law():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(h), h

    ann = fxcons.annotate(M(), (torch.randn(5, 3),))
    assert ann.total_laws == 0


def test_unknown_op_breaks_and_is_reported():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.c(torch.cumsum(torch.relu(self.a(x)), 0))

    ann = fxcons.annotate(M(), (torch.randn(5, 3),))
    assert ann.total_laws == 0
    assert any("cumsum" in b.why for b in ann.breakers)


def test_frozen_parameter_cannot_move():
    m = mlp(nn.ReLU())
    m[2].weight.requires_grad_(False)
    ann = fxcons.annotate(m, (torch.randn(5, 3),))
    assert ann.total_laws == 0


def test_eval_batchnorm_is_affine():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    ann = fxcons.annotate(m, (torch.randn(5, 3),), training=False)
    assert ann.counts()["scale"] == 0
    assert ann.verify(probes=1).ok


def test_squeeze_excitation_gate_carries_rescaling_of_the_gated_branch():
    """x * sigmoid(fc2(relu(fc1(pool(x))))): the gate is scale-free, so conv1's units still
    rescale against conv2 (bilinear rule), and nothing rescales through the sigmoid."""
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.fc1, self.fc2, self.conv2 = nn.Conv2d(3, 4, 1), nn.Linear(4, 2), nn.Linear(2, 4), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3))))))
            return self.conv2(h * s[:, :, None, None])

    ann = fxcons.annotate(SE(), (torch.randn(3, 3, 4, 4),))
    rep = ann.verify(probes=2)
    assert rep.ok
    terms = {(t.param, t.reducer) for f in ann.families for t in f.terms}
    assert ("fc2.weight", "sq0") not in terms and ("fc2.bias", "sq") not in terms  # sigmoid stops fc2's units
    assert ("fc2.weight", "sq1") in terms  # fc1's units still rescale against fc2's columns
    assert ("conv1.weight", "sq0") in terms and ("conv2.weight", "sq1") in terms  # gated branch


# ----------------------------------------------------------------------------- translation
# Two false laws found by tests/test_property.py, each with a twin that keeps its law and a
# direct check that the rejected direction really changes the output.

def _directional_change(model, x, param, direction, head=None):
    """|d/dt f(θ + t·c)| relative to ‖f‖, by a central difference in float64."""
    m = model.double()
    x = x.double()
    p = dict(m.named_parameters())[param]

    def f(t):
        with torch.no_grad():
            p.add_(t * direction)
            torch.manual_seed(0)
            y = m(x)
            p.sub_(t * direction)
        return y - y.mean(-1, keepdim=True) if head == "classification" else y

    return float((f(1e-4) - f(-1e-4)).norm() / 2e-4 / f(0.0).norm())


class TiedThenNorm(nn.Module):
    """norm(L(act(L(x)))) with one Linear L used twice."""

    def __init__(self, act):
        super().__init__()
        self.lin, self.act, self.norm, self.head = nn.Linear(4, 4), act, nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.norm(self.lin(self.act(self.lin(x)))))


def test_tied_bias_shift_through_a_linear_path_is_not_a_law():
    """Shifting L.bias by t·1 shifts the first use's output by t·1, which the second use maps to
    t·(W1 + 1): not constant along the features, so the LayerNorm does not absorb it."""
    torch.manual_seed(0)
    model, x = TiedThenNorm(nn.Identity()), torch.randn(5, 4)
    ann = fxcons.annotate(model, (x,))
    assert not [f for f in ann.families if f.kind == "translation" and "lin.bias" in f.params]
    assert _directional_change(model, x, "lin.bias", torch.ones(4, dtype=torch.float64)) > 1e-3
    assert ann.verify(probes=2).ok


def test_tied_bias_shift_twin_is_kept_when_the_first_use_is_normalized():
    """The twin: a LayerNorm between the two uses absorbs the first shift, the second shift is
    absorbed by the final LayerNorm, so Σ L.bias is a law."""
    torch.manual_seed(0)
    model, x = TiedThenNorm(nn.LayerNorm(4, elementwise_affine=False)), torch.randn(5, 4)
    ann = fxcons.annotate(model, (x,))
    fams = [f for f in ann.families if f.kind == "translation" and f.params == ["lin.bias"]]
    assert len(fams) == 1 and fams[0].count == 1 and fams[0].terms[0].reducer == "total"
    assert _directional_change(model, x, "lin.bias", torch.ones(4, dtype=torch.float64)) < 1e-9
    assert ann.verify(probes=2).ok


class ConvPoolHead(nn.Module):
    """conv → pool → global average → logits over channels (a head with no Linear)."""

    def __init__(self, pool):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(2, 3, 3, padding=1), pool

    def forward(self, x):
        return self.pool(self.conv(x)).mean((2, 3))


def test_column_shift_through_max_pool_is_not_a_law():
    """W + 1uᵀ adds the same map to every output channel, but a max pool picks a different
    position per channel, so the logits no longer move by a constant."""
    torch.manual_seed(0)
    model, x = ConvPoolHead(nn.MaxPool2d(2, stride=1)), torch.randn(4, 2, 5, 5)
    ann = fxcons.annotate(model, (x,), head="classification")
    assert not [f for f in ann.families if "conv.weight" in f.params and f.kind == "translation"]
    u = torch.randn(1, 2, 3, 3, dtype=torch.float64).expand(3, 2, 3, 3)
    assert _directional_change(model, x, "conv.weight", u, head="classification") > 1e-3


def test_column_shift_through_avg_pool_is_a_law():
    torch.manual_seed(0)
    model, x = ConvPoolHead(nn.AvgPool2d(2, stride=1)), torch.randn(4, 2, 5, 5)
    ann = fxcons.annotate(model, (x,), head="classification")
    fams = [f for f in ann.families if f.params == ["conv.weight"] and f.kind == "translation"]
    assert len(fams) == 1 and fams[0].count == 2 * 3 * 3
    u = torch.randn(1, 2, 3, 3, dtype=torch.float64).expand(3, 2, 3, 3)
    assert _directional_change(model, x, "conv.weight", u, head="classification") < 1e-9
    assert ann.verify(probes=2).ok


class ConvThenBN(nn.Module):
    """bn1(conv1(x)) → conv2 → bn2: β of bn1 shifts each channel by a constant; conv2 maps that
    to a constant per output channel only if it does not pad (else the border differs)."""

    def __init__(self, padding):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=padding), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))


@pytest.mark.parametrize("padding,law", [(0, True), (1, False), ("same", False)])
def test_bn_bias_shift_through_a_conv_needs_no_padding(padding, law):
    torch.manual_seed(0)
    model, x = ConvThenBN(padding), torch.randn(4, 2, 6, 6)
    ann = fxcons.annotate(model, (x,))
    fams = [f for f in ann.families if f.params == ["bn1.bias"]]
    assert len(fams) == int(law)
    shift = _directional_change(model.train(), x, "bn1.bias", torch.randn(3, dtype=torch.float64))
    assert (shift < 1e-9) == law
    if law:
        assert fams[0].count == 3 and fams[0].terms[0].reducer == "entry"
    assert ann.verify(probes=2).ok


@pytest.mark.parametrize("dim,law", [(-1, True), (0, False)])
def test_unbatched_conv_bias_is_per_channel(dim, law):
    """Conv2d on a (C, H, W) input: the channel axis is 0. A bias entry's shift is constant over
    H and W; an unpadded 1x1 conv keeps it constant there but mixes the channels, so a softmax
    over W absorbs it and a softmax over C does not (the rule used to take axis 1 for the
    channels and axis 0 for a batch axis the conv carries)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(2, 3, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.softmax(self.c2(self.c1(x)), dim=dim)

    torch.manual_seed(0)
    model, x = M(), torch.randn(2, 5, 5)
    ann = fxcons.annotate(model, (x,))
    fams = [f for f in ann.families if f.params == ["c1.bias"]]
    e = torch.zeros(3, dtype=torch.float64)
    e[0] = 1.0
    shift = _directional_change(model, x, "c1.bias", e)
    if law:
        assert len(fams) == 1 and fams[0].count == 3 and fams[0].terms[0].reducer == "entry"
        assert shift < 1e-9
    else:
        assert not fams and shift > 1e-3
    assert ann.verify(probes=2).ok
