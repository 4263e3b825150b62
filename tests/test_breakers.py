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
