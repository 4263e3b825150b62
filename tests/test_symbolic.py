"""sympy / LaTeX emitter: formulas substituted with random parameters reproduce LawSet.evaluate."""
from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
import torch
from torch import nn

import fxcons
from fxcons.codegen.symbolic import evaluate_sympy, tex_escape, to_latex, to_sympy, unit_symbol
from test_codegen_python import all_forms_lawset, random_params

torch.set_num_threads(1)


def assert_matches(laws, exprs, params, tol=1e-12):
    got = evaluate_sympy(laws, exprs, params)
    ref = laws.evaluate({k: v.double() for k, v in params.items()})
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == tuple(ref[k].shape), k
        np.testing.assert_allclose(got[k], ref[k].numpy(), rtol=tol, atol=tol * max(1.0, ref[k].abs().max().item()),
                                   err_msg=k)


def literal_value(expr, params, u=None):
    """Value by sympy itself: subs the unit index, doit, then substitute every θ entry."""
    e = expr.subs(unit_symbol(expr), u) if u is not None else expr
    e = e.doit()
    vals = {ix: float(params[str(ix.base.label)][tuple(int(i) for i in ix.indices)]) for ix in e.atoms(sp.Indexed)}
    return float(e.xreplace(vals))


def test_all_forms_substitution():
    laws = all_forms_lawset()
    exprs = to_sympy(laws)
    P = random_params(laws, seed=5)
    assert_matches(laws, exprs, P)
    ref = laws.evaluate(P)
    # the three shapes of formula
    e = exprs["a→b rescale[4]"]
    u = unit_symbol(e)
    assert isinstance(e, sp.Expr) and isinstance(u, sp.Idx) and (u.lower, u.upper) == (0, 3)
    assert literal_value(e, P, u=2) == pytest.approx(ref["a→b rescale[4]"][2].item(), rel=1e-12)
    H = exprs["a|b gl[2x2]"]
    assert isinstance(H, sp.MatrixBase) and H.shape == (2, 2) and unit_symbol(H) is not None
    assert H[0, 1] == H[1, 0]
    assert literal_value(H[0, 1], P, u=1) == pytest.approx(ref["a|b gl[2x2]"][4].item(), rel=1e-12)
    L = exprs["linear mix"]  # a literal index -> explicit list
    assert isinstance(L, sp.MatrixBase) and L.shape == (4, 1) and unit_symbol(L) is None
    assert literal_value(L[3], P) == pytest.approx(ref["linear mix"][3].item(), rel=1e-12)
    Q = exprs["conv head qk"]  # non-affine gram -> stacked 3x3 blocks
    assert Q.shape == (6, 3)
    assert literal_value(Q[4, 2], P) == pytest.approx(ref["conv head qk"][6 + 4].item(), rel=1e-12)


def test_hand_written_formula():
    laws = all_forms_lawset()
    e = to_sympy(laws)["a→b rescale[4]"]
    u = unit_symbol(e)
    A, a, B = sp.IndexedBase("a.weight"), sp.IndexedBase("a.bias"), sp.IndexedBase("b.weight")
    i0, i1 = sp.symbols("i0 i1", integer=True, nonnegative=True)
    want = sp.Sum(A[u, i1] ** 2, (i1, 0, 2)) + a[u] ** 2 - sp.Sum(B[i0, u] ** 2, (i0, 0, 5))
    assert e == want
    assert to_sympy(laws)["linear entries"] == sp.IndexedBase("conv.bias")[unit_symbol(to_sympy(laws)["linear entries"])]


class _BN(nn.Module):  # shared/cases B
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.fc = nn.Conv2d(4, 3, 3, padding=1), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).mean((2, 3)))


class _MHA(nn.Module):  # shared/cases E: gram (query/key, value/output) and linear (key bias) families
    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.a(x, x, x)[0]


@pytest.mark.parametrize("make,x,head", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (2, 3), None),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)), (2, 2, 4, 4), None),
    (_BN, (4, 3, 5, 5), None),
    (_MHA, (2, 4, 4), None),
    # linear bottleneck (gram) and softmax-head translations (sum0, total)
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (5, 3), "classification"),
])
def test_annotated_models(make, x, head):
    torch.manual_seed(0)
    m = make()
    ann = fxcons.annotate(m, (torch.randn(*x),), head=head)
    assert ann.total_laws > 0
    exprs = ann.to_sympy()
    assert list(exprs) == [f.name for f in ann.families]
    P = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in m.named_parameters()}
    assert_matches(ann.laws, exprs, P)


def test_flatten_block_is_a_k_sum():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))
    ann = fxcons.annotate(m, (torch.randn(2, 2, 4, 4),))
    (e,) = ann.to_sympy().values()
    k = sp.Symbol("k", integer=True, nonnegative=True)
    limits = [lim for s in e.atoms(sp.Sum) for lim in s.limits if lim[0] == k]
    assert limits == [(k, 0, 3)]  # the 2x2 positions of one channel, read by 3.weight[:, 4u + k]
    assert sp.IndexedBase("3.weight")[sp.Symbol("i0", integer=True, nonnegative=True), k + 4 * unit_symbol(e)] in e.atoms(sp.Indexed)


def test_latex_document():
    laws = all_forms_lawset()
    tex = to_latex(laws)
    assert tex.startswith("\\documentclass{article}") and tex.rstrip().endswith("\\end{document}")
    assert tex.count("\\section{") == len(laws.families)
    assert all(ord(c) < 128 for c in tex)
    assert tex.count("{") == tex.count("}") + tex.count("\\{") - tex.count("\\}")
    for env in ("document", "itemize", "align*"):
        assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}")
    assert "\\section{a$\\rightarrow$b rescale[4]}" in tex
    assert "\\item laws: 12 (independent: 12)" in tex
    assert "exact as the normalization" in tex  # eps families say so
    assert "h_{u} &= \\sum_{i_{1}=0}^{2} {\\mathtt{a.weight}}_{u,i_{1}}^{2}" in tex
    assert re.search(r"\\left\(H_\{u\}\\right\)_\{a b\} &=", tex)
    assert tex_escape("x_1 → #2 ∅ ★") == "x\\_1 $\\rightarrow$ \\#2 $\\emptyset$ ?"


def test_resnet18_formulas():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ann = fxcons.annotate(tv.models.resnet18(), (torch.randn(2, 3, 32, 32),))
    exprs = ann.to_sympy()
    assert len(exprs) == len(ann.families)
    stream = next(f for f in ann.families if f.name.startswith("layer4.0.bn2"))
    e = exprs[stream.name]
    assert {str(b.label) for b in e.atoms(sp.IndexedBase)} == set(stream.params)
    assert unit_symbol(e).upper == stream.count - 1
    # one law checked by substitution (sum over 512 input columns of fc, 3x3 kernels...)
    P = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in ann.model.named_parameters()}
    vals = {k: v.numpy() for k, v in P.items()}
    from fxcons.codegen.symbolic import _numeric

    assert _numeric(e, vals, {unit_symbol(e): 7}) == pytest.approx(stream.evaluate(P)[7].item(), rel=1e-10)
    tex = ann.to_latex()
    assert tex.count("\\section{") == len(ann.families) and all(ord(c) < 128 for c in tex)
