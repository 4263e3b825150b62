"""The Lie-algebra count of LAWS.md §5 (fxcons.completeness).

The expected numbers are the hand-derived law counts of LAWS.md and shared/cases (the cases'
README says each list was shown complete by a bracket count): the count must certify them, must
report a gap when a law is withheld, and must call a false law unsound."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxcons
from fxcons.completeness import _CompositeNorms, bracket, completeness
from fxcons.errors import FxconsError
from fxcons.lawset import LawFamily, LawSet, Term
from fxcons.models import REGISTRY

from test_cases import CaseA, CaseB, CaseC, CaseD, CaseE


CASES = {  # name: (model factory, input shape, input std, hand-derived number of laws)
    "A": (CaseA, (2, 3, 5, 5), 3.0, 5),
    "B": (CaseB, (4, 3, 5, 5), 1.0, 15),
    "C-data": (lambda: CaseC(False), (6, 4), 1.0, 0),
    "C-stem": (lambda: CaseC(True), (6, 5), 1.0, 4),
    "D": (CaseD, (2, 4, 5, 5), 1.0, 16),
    "E": (CaseE, (2, 4, 4), 1.0, 16),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_worked_cases_are_certified_complete(name):
    make, shape, std, laws = CASES[name]
    torch.manual_seed(3)
    model = make()
    ann = fxcons.annotate(model, (std * torch.randn(shape),))
    rep = completeness(ann)
    assert rep.sound and rep.certified, rep.to_dict()
    assert rep.lower == rep.upper == laws == ann.total_laws
    assert rep.orthogonality_max < 1e-12
    assert rep.clear and rep.margin[0] < 1e-10 < 1e-8 < rep.margin[1]   # rank decisions far from the threshold


def test_a_deep_linear_network_needs_brackets():
    """x → W2 W1 x, r = 3 hidden units: r(r+1)/2 = 6 laws (LAWS.md §3.2). The fields alone span
    too little (their count would claim more laws); the brackets close the gap."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 4, bias=False))
    ann = fxcons.annotate(model, (torch.randn(8, 4),))
    rep = completeness(ann)
    D = 24
    assert rep.certified and rep.upper == 6 == ann.total_laws
    assert rep.depth == 2 and rep.dims[0] < D - 6 == rep.dims[1]
    assert rep.bracket_fd_error < 1e-6


@pytest.mark.parametrize("head", [None, "classification"])
def test_relu_mlp(head):
    """One rescale law per hidden unit (6 + 6); with a softmax head also the output layer's
    column sums and bias sum (6 + 1)."""
    model, x = REGISTRY["relu_mlp"](dims=(4, 6, 6, 3))
    ann = fxcons.annotate(model, x, head=head)
    rep = completeness(ann)
    assert rep.certified and rep.upper == 12 + (7 if head else 0)


def test_one_layer_transformer_is_certified():
    """Attention (GL per head), LayerNorm scale and translation, ReLU MLP, token ↔ position
    shift transfer: 60 laws, 59 independent (the shift along c = 1 is the sum of the
    embeddings' row-sum laws). The count found the two families fxcons used to miss (the
    attention output projection's translations and the shift transfer)."""
    model, x = REGISTRY["tiny_transformer"](vocab=5, seq_len=4, dim=4, heads=2, ff=6, layers=1, num_classes=3)
    ann = fxcons.annotate(model, x)
    rep = completeness(ann, thetas=1)
    assert ann.total_laws == 60
    assert rep.certified and rep.lower == rep.upper == 59 and rep.depth == 3


def test_a_withheld_law_family_shows_as_a_gap():
    torch.manual_seed(3)
    model = CaseD()
    ann = fxcons.annotate(model, (torch.randn(2, 4, 5, 5),))
    dropped = ann.laws.families[0]
    ann.laws = LawSet(ann.laws.families[1:], ann.laws.param_shapes)
    rep = completeness(ann, thetas=1, depth=2)
    assert rep.sound and not rep.certified
    assert rep.gap == dropped.count and rep.upper == 16
    assert "gap of" in rep.verdict


def test_a_false_law_is_unsound():
    """Case B's 'not a law' (BN's output does not scale with its input): conv1's row norms plus
    bias squares minus γ²."""
    import numpy as np

    torch.manual_seed(3)
    model = CaseB()
    ann = fxcons.annotate(model, (torch.randn(4, 3, 5, 5),))
    idx = np.arange(4)[:, None]
    bad = LawFamily("bad", "rescale", "exact", "diag", [Term("conv1.weight", "sq0", 1.0, idx),
                                                         Term("conv1.bias", "sq", 1.0, idx),
                                                         Term("bn.weight", "sq", -1.0, idx)])
    ann.laws = LawSet(ann.laws.families + [bad], ann.laws.param_shapes)
    rep = completeness(ann)
    assert not rep.sound and not rep.certified and rep.orthogonality_max > 1e-3
    assert rep.verdict.startswith("UNSOUND")


def test_composite_layer_norm_has_the_right_third_derivative():
    """Brackets of depth 3 differentiate a normalization three times; the count evaluates
    normalizations as compositions of elementary ops (torch 2.14's fused layer_norm gets its
    third derivative wrong, batch_norm refuses it). Checked against finite differences."""
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    xb, wb = (torch.randn(3, 4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    # (the inputs depend on θ non-affinely per channel, which no normalization removes)
    fns = {
        "layer_norm": lambda th: (w * F.layer_norm(x * th[:4] + th[4:8], (4,), th[8:12], th[12:16])).sum(),
        "batch_norm": lambda th: (wb * F.batch_norm(xb * th[:4, None] + th[4:8, None] * xb.square(), None, None, th[8:12],
                                                    th[12:16], True)).sum(),
        "group_norm": lambda th: (wb * F.group_norm(xb * th[:4, None] + th[4:8, None] * xb.square(), 2, th[8:12], th[12:16])).sum(),
        "instance_norm": lambda th: (wb * F.instance_norm(xb * th[:4, None] + th[4:8, None] * xb.square(), None, None,
                                                          th[8:12], th[12:16])).sum(),
    }
    th, u = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    for name, f in fns.items():
        with _CompositeNorms(1e-20):
            t = torch.zeros((), dtype=torch.float64, requires_grad=True)
            d = f(th + t * u)
            for k in range(3):
                (d,) = torch.autograd.grad(d, t, create_graph=k < 2)
            e = 2e-4
            vals = [f(th + s * e * u) for s in (2, 1, -1, -2)]
        fd = (vals[0] - 2 * vals[1] + 2 * vals[2] - vals[3]) / (2 * e ** 3)
        assert math.isclose(float(d), float(fd), rel_tol=1e-4, abs_tol=1e-6), name


def test_brackets_agree_with_finite_differences():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    ann = fxcons.annotate(model, (torch.randn(5, 3),))
    from fxcons.completeness import _Functional

    fn = _Functional(ann, model, 0, 1000)
    b = bracket(fn.field(1), bracket(fn.field(2), fn.field(3)))
    value = b(fn.theta)
    assert value.norm() > 1e-3
    assert b.fd_error(fn.theta, value, fn.tol.fd_steps) < 1e-7
    assert b.fd_error(fn.theta, 1.01 * value, fn.tol.fd_steps) > 1e-3   # and the check can fail


def test_the_callers_random_state_is_kept_and_size_is_bounded():
    model, x = REGISTRY["relu_mlp"](dims=(4, 6, 3))
    ann = fxcons.annotate(model, x)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    completeness(ann)
    torch.testing.assert_close(torch.rand(3), expected)
    with pytest.raises(FxconsError, match="max_params=10"):
        completeness(ann, max_params=10)


def test_cli_completeness_json(capsys):
    from fxcons.cli import main

    assert main(["annotate", "models:relu_mlp?dims=4,6,3", "--completeness", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    c = out["completeness"]
    assert c["certified"] and c["lower"] == c["upper"] == 6 == out["total_laws"]
    assert main(["annotate", "models:resnet18_cifar", "--completeness"]) == 2
    assert "max_params" in capsys.readouterr().err


def test_unclear_rank_decisions_are_inconclusive_not_certified():
    from fxcons.completeness import CompletenessReport

    clear = CompletenessReport(params=10, emitted=3, lower=3, upper=3, margin=(1e-14, 1e-3))
    assert clear.certified and clear.verdict == "complete"
    murky = CompletenessReport(params=10, emitted=3, lower=3, upper=3, margin=(9e-8, 1.1e-7))
    assert murky.sound and not murky.clear and not murky.certified
    assert murky.verdict.startswith("inconclusive") and murky.to_dict()["certified"] is False
