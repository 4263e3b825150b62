"""Regression tests for false laws and crashes found by a red-team pass over unusual op mixes.

Each case states what went wrong, asserts that the false family is gone (structurally: which
parameters the emitted families touch), and that what remains passes the oracle, the direct
invariance check included. Where the op still carries a symmetry (``x.T``, ``h.mul_(s)``), the
test asserts the law that survives.
"""
import warnings

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxcons

FRONTENDS = ["fx", "export"]


def annotate(model, *inputs, frontend="auto", head=None):
    torch.manual_seed(0)
    ann = fxcons.annotate(model, inputs, head=head, frontend=frontend)
    return ann


def touches(ann, param: str) -> list[str]:
    return [f.name for f in ann.families if param in f.params]


def assert_sound(ann):
    rep = ann.verify(probes=2)
    assert rep.ok, ([(f.name, f.max_ratio) for f in rep.families if not f.passed], rep.invariance)


class TwoLayer(nn.Module):
    """l2(relu(op(l1(x)))) or op(l2(relu(l1(x)))) for a value op under test."""

    def __init__(self, op, where="middle"):
        super().__init__()
        self.l1, self.l2, self.op, self.where = nn.Linear(4, 4), nn.Linear(4, 3), op, where

    def forward(self, x):
        if self.where == "middle":
            return self.l2(torch.relu(self.op(self.l1(x))))
        return self.op(self.l2(torch.relu(self.l1(x))))


# ----------------------------------------------------------------------------- value ops taken for shape ops

@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tril_is_a_value_op(frontend):
    """tril used to give its output scale 0 without constraining its input: l1's rows got a
    'law' with no consumer (r ≈ 0.8)."""
    ann = annotate(TwoLayer(torch.tril), torch.randn(2, 4, 4), frontend=frontend)
    assert not touches(ann, "l1.weight")
    assert_sound(ann)


def test_transpose_attribute_is_a_permute():
    """``y.T`` on the output was a 'meta' getattr: l2's rows got a free scale. It is a permute:
    the output keeps scale 0 and the l1→l2 law survives."""
    ann = annotate(TwoLayer(lambda y: y.T, where="end"), torch.randn(6, 4), frontend="fx")
    assert [(f.kind, f.count, sorted(f.params)) for f in ann.families] == [
        ("rescale", 4, ["l1.bias", "l1.weight", "l2.weight"])]
    assert_sound(ann)


def test_matrix_transpose_attribute_is_a_permute():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(3, 2)

        def forward(self, x):  # (B, 3, 4) -> (B, 3, 5) -> mT (B, 5, 3) -> l2 reads the 3 axis
            return self.l2(torch.relu(self.l1(x)).mT)

    ann = annotate(M(), torch.randn(2, 3, 4), frontend="fx")
    # l1's units now sit on an axis l2 does not read: only their common scale survives,
    # against all of l2's weight (one law)
    assert [(f.kind, f.count, sorted(f.params)) for f in ann.families] == [
        ("rescale", 1, ["l1.bias", "l1.weight", "l2.weight"])]
    assert_sound(ann)


def test_float_remainder_is_a_value_op():
    ann = annotate(TwoLayer(lambda y: y % 1.5, where="end"), torch.randn(6, 4), frontend="fx")
    assert not touches(ann, "l2.weight") or all(
        "l1.weight" in f.params for f in ann.families if "l2.weight" in f.params)
    assert not [f for f in ann.families if f.params == ["l2.weight", "l2.bias"]]
    assert_sound(ann)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_detach_stops_the_law(frontend):
    """The output is invariant, but l1 gets no gradient through .detach(): one SGD step moves
    ‖l1 row‖² − ‖l2 col‖² at first order."""
    ann = annotate(TwoLayer(lambda y: y.detach()), torch.randn(6, 4), frontend=frontend)
    assert not touches(ann, "l1.weight") and not touches(ann, "l2.weight")
    assert any("stops the gradient" in b.why for b in ann.breakers)


# ----------------------------------------------------------------------------- translation: every operand

@pytest.mark.parametrize("frontend", FRONTENDS)
def test_shift_through_a_computed_bias_is_not_dropped(frontend):
    """F.linear(x, W, b1 + b2): shifting b1 shifts the output; the linear rule only followed
    the input operand and reported Σb1 as a law (r ≈ 0.85)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.W, self.b1, self.b2 = (nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(3)),
                                        nn.Parameter(torch.randn(3)))

        def forward(self, x):
            return F.linear(x, self.W, self.b1 + self.b2)

    m = M()
    ann = annotate(m, torch.randn(6, 4), frontend=frontend)
    # Σ b1 alone is not a law; the shift transfer b1 + c, b2 − c (the computed bias b1 + b2 does
    # not move) is, per entry: b1 − b2
    (fam,) = [f for f in ann.families if "b1" in f.params or "b2" in f.params]
    assert sorted(fam.params) == ["b1", "b2"] and fam.kind == "translation"
    torch.testing.assert_close(ann.evaluate(m)[fam.name], (m.b1 - m.b2).detach())
    assert_sound(ann)


def test_shift_through_an_attention_mask_is_not_dropped():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.B, self.lin = nn.Parameter(torch.randn(5, 5)), nn.Linear(4, 4)
            self.register_buffer("z", torch.zeros(5, 5))

        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, self.lin(x), attn_mask=(self.z + self.B).transpose(0, 1))

    ann = annotate(M(), torch.randn(2, 5, 4))
    assert not touches(ann, "B")
    assert_sound(ann)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_stack_moves_the_axes_after_the_new_one(frontend):
    """stack([l(x).t()], 0) is (1, 3, B): a bias entry's shift is constant along B (axis 2); the
    cat rule reported axis 1, which log_softmax(dim=1) then 'absorbed' (r = 1). The total shift
    (constant along every axis) is still absorbed: Σ bias is a law."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return torch.log_softmax(torch.stack([self.lin(x).t()], dim=0), dim=1)

    ann = annotate(M(), torch.randn(5, 4), frontend=frontend)
    bias = [f for f in ann.families if f.params == ["lin.bias"]]
    assert len(bias) == 1 and bias[0].count == 1 and bias[0].terms[0].reducer == "total"
    assert_sound(ann)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_matmul_batch_axes_need_the_other_operand_flat(frontend):
    """bmm(l(x), y) with y data varying over the batch: a bias shift becomes δ·y[b], not
    constant over the batch, so BatchNorm does not absorb it (r = 1) -- and the bias may not be
    dropped from the scale law either."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(4, 3), nn.BatchNorm1d(6)

        def forward(self, x, y):
            return self.bn(torch.bmm(self.lin(x), y).transpose(1, 2))

    ann = annotate(M(), torch.randn(5, 2, 4), torch.randn(5, 3, 6), frontend=frontend)
    assert not [f for f in ann.families if f.kind == "translation"]
    scale = [f for f in ann.families if f.kind == "scale"]
    assert len(scale) == 1 and sorted(scale[0].params) == ["lin.bias", "lin.weight"]
    assert_sound(ann)


# ----------------------------------------------------------------------------- operands the views dropped

@pytest.mark.parametrize("frontend", FRONTENDS)
def test_prelu_slope_is_an_operand(frontend):
    """F.prelu(bn(l1(x)), l1.bias): the slope is a use of l1.bias, which the 'homog' view left
    out, so Σ l1.bias looked like a law (r = 1). The bn→l2 law through PReLU stays."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.bn, self.l2 = nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)

        def forward(self, x):
            return self.l2(F.prelu(self.bn(self.l1(x)), self.l1.bias))

    ann = annotate(M(), torch.randn(6, 4), frontend=frontend)
    assert not touches(ann, "l1.bias")
    assert [sorted(f.params) for f in ann.families if f.kind == "rescale"] == [["bn.bias", "bn.weight", "l2.weight"]]
    assert_sound(ann)


def test_prelu_module_slope_tied_to_a_bias():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.act, self.l2 = nn.Linear(4, 1), nn.PReLU(1), nn.Linear(1, 3)
            self.act.weight = self.l1.bias

        def forward(self, x):
            return self.l2(self.act(self.l1(x)))

    ann = annotate(M(), torch.randn(6, 4))
    assert ann.total_laws == 0


@pytest.mark.parametrize("how", ["module", "functional"])
def test_embedding_max_norm_has_no_rule(how):
    """max_norm renormalizes the looked-up rows in the forward: rescaling a column of the table
    changes the output by ~10%, although every gradient is orthogonal to the 'law'."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.lin = nn.Embedding(7, 4, max_norm=1.0), nn.Linear(4, 3)

        def forward(self, i):
            if how == "module":
                return self.lin(self.e(i))
            return self.lin(F.embedding(i, self.e.weight, max_norm=1.0))

    ann = annotate(M(), torch.randint(0, 7, (3, 5)), frontend="fx")
    assert not touches(ann, "e.weight")
    assert any("max_norm" in b.why for b in ann.breakers)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_embedding_scale_grad_by_freq_has_no_rule(frontend):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.lin = nn.Embedding(7, 4, scale_grad_by_freq=True), nn.Linear(4, 3)

        def forward(self, i):
            return self.lin(self.e(i))

    ann = annotate(M(), torch.tensor([[0, 1, 1, 2, 2], [2, 3, 4, 5, 6]]), frontend=frontend)
    assert not touches(ann, "e.weight")


# ----------------------------------------------------------------------------- in-place ops under fx

class InplaceScale(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.l1, self.l2, self.s, self.op = nn.Linear(4, 5), nn.Linear(5, 3), nn.Parameter(torch.rand(5) + 0.5), op

    def forward(self, x):
        h = self.l1(x)
        self.op(h, self.s)  # statement form: the result is not rebound
        return self.l2(torch.relu(h))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_inplace_mul_is_followed(frontend):
    """``h.mul_(s)`` then ``l2(relu(h))``: fx pointed l2 at h before the write. Followed, the
    graph is l2(relu(l1(x)·s)): l1 rows rescale against s, s against l2's columns."""
    ann = annotate(InplaceScale(lambda h, s: h.mul_(s)), torch.randn(6, 4), frontend=frontend)
    # two independent laws per unit (any basis of the span of l1|s and s|l2)
    assert ann.counts()["rescale"] == ann.total_laws == 10
    assert set().union(*(f.params for f in ann.families)) == {"l1.weight", "l1.bias", "s", "l2.weight"}
    assert_sound(ann)


def test_inplace_add_is_followed():
    m = InplaceScale(lambda h, s: h.add_(s))
    ann = annotate(m, torch.randn(6, 4), frontend="fx")
    # Σ s is not a law; l1.bias + c, s − c (the sum h + s does not move) is: l1.bias − s
    (shift,) = [f for f in ann.families if f.kind == "translation"]
    assert sorted(shift.params) == ["l1.bias", "s"]
    torch.testing.assert_close(ann.evaluate(m)[shift.name], (m.l1.bias - m.s).detach())
    assert [sorted(f.params) for f in ann.families if f.kind != "translation"] == \
        [["l1.bias", "l1.weight", "l2.weight", "s"]]
    assert_sound(ann)


def _write_through_a_view(h):
    h[:, :2].mul_(2.0)
    return h


def test_inplace_write_through_a_view_is_refused_by_fx_and_exported():
    with pytest.raises(fxcons.CaptureError, match="shares memory"):
        fxcons.annotate(TwoLayer(_write_through_a_view), (torch.randn(6, 4),), frontend="fx")
    ann = annotate(TwoLayer(_write_through_a_view), torch.randn(6, 4))  # auto: export functionalizes it
    assert ann.frontend == "export"
    assert_sound(ann)


# ----------------------------------------------------------------------------- eps constants

def test_small_constant_added_to_a_unit_is_not_an_eps():
    """h + 1e-3 feeding the next layer was read as a normalization's eps (a 'scale' law, r = 0.5)."""
    assert annotate(TwoLayer(lambda h: h + 1e-3), torch.randn(6, 4)).total_laws == 0


def test_eps_under_an_rsqrt_is_still_a_normalization():
    rms = TwoLayer(lambda h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
    ann = annotate(rms, torch.randn(6, 4))
    scale = [f for f in ann.families if f.kind == "scale"]
    assert len(scale) == 1 and scale[0].exactness == "eps" and sorted(scale[0].params) == ["l1.bias", "l1.weight"]
    assert_sound(ann)


# ----------------------------------------------------------------------------- crashes

@pytest.mark.parametrize("frontend", FRONTENDS)
def test_computed_linear_weight_breaks_instead_of_crashing(frontend):
    class TiedAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.l0, self.l1 = nn.Linear(4, 4), nn.Linear(4, 6)

        def forward(self, x):
            return F.linear(torch.relu(self.l1(torch.relu(self.l0(x)))), self.l1.weight.t())

    ann = annotate(TiedAE(), torch.randn(6, 4), frontend=frontend)
    assert any("computed" in b.why for b in ann.breakers)
    assert_sound(ann)


def test_computed_conv_weight_breaks_instead_of_crashing():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.W, self.c2 = nn.Parameter(torch.randn(4, 3, 3, 3)), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c2(torch.relu(F.conv2d(x, self.W * 2.0)))

    ann = annotate(M(), torch.randn(2, 3, 5, 5), frontend="fx")
    assert not touches(ann, "W")
    assert_sound(ann)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_softmax_module_without_dim():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.sm = nn.Linear(4, 3), nn.Softmax()

        def forward(self, x):
            return self.sm(self.lin(x))

    ann = annotate(M(), torch.randn(6, 4), frontend="fx")  # 2-d input: legacy dim 1 (the features)
    assert [(f.params, f.terms[0].reducer) for f in ann.families] == [(["lin.weight"], "sum0"), (["lin.bias"], "total")]
    assert_sound(ann)


def _scatter_with_a_cpu_index(h):
    idx = torch.tensor([[3, 2, 1, 0]]).expand(h.shape[0], 4)  # made on the CPU inside forward
    return torch.zeros_like(h).scatter(1, idx, h)


def test_export_of_a_forward_that_makes_cpu_tensors():
    ann = annotate(TwoLayer(_scatter_with_a_cpu_index), torch.randn(6, 4), frontend="export")
    assert ann.frontend == "export"
    assert_sound(ann)


# ----------------------------------------------------------------------------- round 2: unbatched ops, capture

class PoolBetween(nn.Module):
    """u(pool(v(x))) on a 2-d (B, r) tensor: a 1-d pool reads it as one unbatched (C=B, L=r)
    sample and mixes the r features, so neither GL(r) nor per-unit rescaling survives."""

    def __init__(self, pool, act=False):
        super().__init__()
        self.v, self.pool, self.u, self.act = nn.Linear(6, 4), pool, nn.Linear(4, 3), act

    def forward(self, x):
        h = self.v(x)
        return self.u(self.pool(torch.relu(h) if self.act else h))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("pool,act", [(nn.AvgPool1d(3, 1, 1), False), (nn.MaxPool1d(3, 1, 1), True)])
def test_1d_pool_on_a_2d_tensor_pools_the_features(pool, act, frontend):
    ann = annotate(PoolBetween(pool, act), torch.randn(5, 6), frontend=frontend)
    # only the common scale of all 4 units survives (one law), no GL(4) block
    assert [(f.kind, f.count) for f in ann.families] == [("rescale", 1)]
    assert_sound(ann)


def test_unbatched_conv1d_reads_the_batch_rows_as_channels():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.v, self.c = nn.Linear(6, 3), nn.Conv1d(3, 2, 1)

        def forward(self, x):  # (3, 6) -> v -> (3, 3) -> Conv1d: channels = the 3 rows of x
            return self.c(self.v(x))

    ann = annotate(M(), torch.randn(3, 6), frontend="fx")
    assert not [f for f in ann.families if f.kind == "gl"]
    assert_sound(ann)


def test_auto_exports_when_forward_makes_tensors_fx_cannot_run_on_meta():
    class Alibi(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(4, 8)
            self.slope = nn.Parameter(torch.tensor(0.5))

        def forward(self, x):
            pos = torch.arange(x.shape[1])
            rel = (pos[None] - pos[:, None]).to(x.dtype)
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) + self.slope * rel, -1)
            return self.o(a @ self.v(x))

    with pytest.raises(fxcons.CaptureError, match="frontend='export'"):
        fxcons.annotate(Alibi(), (torch.randn(2, 5, 8),), frontend="fx")
    ann = annotate(Alibi(), torch.randn(2, 5, 8))
    assert ann.frontend == "export" and ann.counts()["attention_vo"] > 0
    assert_sound(ann)


def test_shape_arithmetic_on_python_values_is_not_a_tensor_op():
    """timm's drop path builds (x.shape[0],) + (1,) * (x.ndim - 1): a tuple 'mul' and 'add'."""
    drop_path_mask = TwoLayer(lambda h: h * h.new_ones((h.shape[0],) + (1,) * (h.ndim - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rule may fail on it
        ann = annotate(drop_path_mask, torch.randn(6, 4), frontend="fx")
    assert [(f.kind, f.count) for f in ann.families] == [("rescale", 4)]
    assert_sound(ann)


def test_a_rule_that_cannot_read_a_node_breaks_instead_of_crashing(monkeypatch):
    """The engine's safety net: an exception inside a rule is a breaker (sound) and a warning."""
    from fxcons.passes import SCALE_RULES

    def broken_rule(A, node, v):
        raise IndexError("synthetic")

    monkeypatch.setitem(SCALE_RULES, "homog", broken_rule)
    with pytest.warns(UserWarning, match="cannot read this node"):
        ann = annotate(TwoLayer(nn.Identity()), torch.randn(6, 4), frontend="fx")
    assert not touches(ann, "l1.weight")
    assert any("synthetic" in b.why for b in ann.breakers)
    assert_sound(ann)


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_transformer_layers_of_torch_nn_are_traced_through(layer):
    """nn.TransformerEncoderLayer has no rule of its own: it was an opaque leaf (0 laws)."""
    torch.manual_seed(0)
    if layer == "encoder":
        model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
        inputs = (torch.randn(2, 5, 8),)
    else:
        model, inputs = nn.TransformerDecoderLayer(8, 2, 16, batch_first=True), (torch.randn(2, 5, 8), torch.randn(2, 4, 8))
    ann = annotate(model, *inputs)
    assert ann.counts()["attention_qk"] > 0 and ann.counts()["rescale"] > 0
    assert_sound(ann)


def test_timm_spec_options_size_the_example_input():
    pytest.importorskip("timm")
    from fxcons.specs import load_spec

    lm = load_spec("timm:vit_tiny_patch16_224?img_size=32&depth=1")
    assert lm.example_inputs[0].shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- the oracle's own limits

class QuietChannel(nn.Module):
    """A depthwise 1x1 conv (one scalar per channel) and a BatchNorm, where channel 1's input is
    scaled by 1e-7 (variance ~1e-14, below the probe's eps = 1e-12): the eps term is then the
    whole gradient of w_1, and the scale law w_1² reads as r ≈ 1 until eps → 0."""

    def __init__(self):
        super().__init__()
        self.register_buffer("quiet", torch.tensor([1.0, 1e-7]).reshape(1, 2, 1, 1))
        self.dw, self.bn, self.head = nn.Conv2d(2, 2, 1, groups=2, bias=False), nn.BatchNorm2d(2), nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.head(self.bn(self.dw(x * self.quiet)))


def test_eps_laws_are_checked_in_the_eps_to_zero_limit():
    from fxcons.lawset import LawFamily, LawSet, Term

    ann = annotate(QuietChannel(), torch.randn(4, 2, 5, 5))
    scale = [f for f in ann.families if f.params == ["dw.weight"]]
    assert len(scale) == 1 and scale[0].exactness == "eps" and scale[0].count == 2
    rep = ann.verify(probes=2, invariance=False)
    check = next(c for c in rep.families if c.name == scale[0].name)
    assert check.passed and check.eps == 1e-20 and check.max_ratio <= 1e-4
    # a non-law labelled eps is not rescued by the smaller eps: w_c² − γ_c²
    idx = np.arange(2)[:, None]
    ann.laws = LawSet([LawFamily("bad", "scale", "eps", "diag", [Term("dw.weight", "sq0", 1.0, idx),
                                                                  Term("bn.weight", "sq", -1.0, idx)])],
                      ann.laws.param_shapes)
    bad = ann.verify(probes=1, invariance=False)
    assert not bad.ok and bad.families[0].eps == 1e-20 and bad.max_ratio > 1e-2


def test_a_model_that_computes_in_float32_is_checked_to_float32_precision():
    class Upcast(nn.Module):  # timm's EfficientViT: q.float() "upcasts" -- in a float64 probe it rounds
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):  # the activation is rounded to float32 (x 1.7 is not exact there)
            return self.l2(torch.relu(self.l1(x).float() * 1.7).to(x.dtype))

    ann = annotate(Upcast(), torch.randn(6, 4))
    rep = ann.verify(probes=2)
    assert rep.precision == torch.float32 and rep.ok
    assert rep.to_dict()["precision"] == "float32"
    plain = annotate(TwoLayer(nn.Identity()), torch.randn(6, 4)).verify(probes=1)
    assert plain.precision == torch.float64


class RotaryLogits(nn.Module):
    """EVA-02-style attention: a rotary-like per-position factor on every token but the class
    token, concatenated back along the positions (so q's and k's ids vary along them), explicit
    matmul core."""

    def __init__(self, T=64, E=16, H=2):
        super().__init__()
        self.H, self.d = H, E // H
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))
        self.register_buffer("rot", torch.randn(T, E // H))

    def forward(self, x):
        B, T, E = x.shape

        def heads(t):
            return t.view(B, T, self.H, self.d).transpose(1, 2)

        def rope(t):
            return torch.cat([t[:, :, :1], t[:, :, 1:] * self.rot[1:]], dim=2)

        q, k, v = rope(heads(self.q(x))), rope(heads(self.k(x))), heads(self.v(x))
        p = torch.softmax(q @ k.transpose(-1, -2), -1)
        return self.o((p @ v).transpose(1, 2).reshape(B, T, E))


def test_attention_logits_with_per_position_scales_stay_linear_in_size():
    """q·kᵀ with per-position ids took T²·d·H general equations (timm EVA-02 at 224 px ran out of
    24 GB); the factored form takes O(T·d + T²) per head, and finds the same laws."""
    from fxcons.capture import capture
    from fxcons.ops import canonicalize
    from fxcons.passes import SCALE_RULES
    from fxcons.scale import ScaleAnalysis

    T, E, H = 96, 16, 2  # 147k (m, k, n) triples: above FACTOR_ABOVE
    torch.manual_seed(0)
    model, x = RotaryLogits(T, E, H), torch.randn(2, T, E)
    cap = capture(model, (x,))
    canonicalize(cap)
    A = ScaleAnalysis(cap)
    A.run(SCALE_RULES)
    d = E // H
    assert len(A.sys._rows) <= 3 * H * (T * d + d * T + T * T)  # not T·T·d·H
    ann = annotate(model, x)
    # value/output: d(d+1)/2 per head; query/key: the per-position factors leave no GL law
    assert ann.counts()["attention_vo"] == H * d * (d + 1) // 2 and ann.counts()["attention_qk"] == 0
    assert_sound(ann)


# ----------------------------------------------------------------------------- round 3: hooks, prune, literal eps

def _clamp_hook(module, inputs, output):
    return output.clamp(max=0.3)


@pytest.mark.parametrize("how", ["forward hook", "pre-hook", "instance forward", "root hook"])
def test_forward_hooks_and_replaced_forwards_are_seen(how):
    """fx builds its graph from module types: a forward hook (clamp), a pre-hook (x²), a forward
    replaced on the instance (tanh) were invisible, and the laws through them false (r ≈ 0.2)."""
    import types

    model = TwoLayer(nn.Identity())
    if how == "forward hook":
        model.l1.register_forward_hook(_clamp_hook)
    elif how == "pre-hook":
        model.l2.register_forward_pre_hook(lambda m, i: (i[0] ** 2,))
    elif how == "instance forward":
        model.l1.forward = types.MethodType(lambda self, x: torch.tanh(F.linear(x, self.weight, self.bias)), model.l1)
    else:
        model.register_forward_hook(_clamp_hook)
    with pytest.raises(fxcons.CaptureError, match="forward hooks"):
        fxcons.annotate(model, (torch.randn(6, 4),), frontend="fx")
    ann = annotate(model, torch.randn(6, 4))  # auto: exported, hooks included
    assert ann.frontend == "export"
    if how in ("forward hook", "instance forward"):
        assert not touches(ann, "l1.weight")  # clamp / tanh after l1 stops its rescaling
    assert_sound(ann)


def test_backward_hooks_are_warned_about():
    model = TwoLayer(nn.Identity())
    model.l2.register_full_backward_hook(lambda m, gi, go: None)
    with pytest.warns(UserWarning, match="backward hooks on l2"):
        annotate(model, torch.randn(6, 4))


@pytest.mark.filterwarnings("ignore:The tensor attribute")  # torch.export on hook-assigned weights
@pytest.mark.parametrize("util", ["prune", "weight_norm"])
def test_pruned_and_legacy_weight_normed_models_are_captured(util):
    """prune / legacy weight_norm store the weight a hook computes as a non-leaf tensor attribute,
    which deepcopy refuses: annotate crashed with a raw RuntimeError."""
    import torch.nn.utils.prune as prune

    model = TwoLayer(nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if util == "prune":
            prune.l1_unstructured(model.l1, "weight", amount=0.5)
        else:
            torch.nn.utils.weight_norm(model.l1)
    model(torch.randn(6, 4))  # the hook has run: weight is a computed tensor
    ann = annotate(model, torch.randn(6, 4))
    assert ann.frontend == "export" and not touches(ann, "l1.weight")
    assert_sound(ann)


def test_a_literal_eps_in_a_functional_norm_is_lowered_by_the_oracle():
    """F.batch_norm(..., eps=1e-5 by default) in forward: the oracle lowered only module eps
    attributes, so this correct eps-law failed verify (ratio 2e-4)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 2, 1)
            self.g, self.b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.c(torch.relu(F.batch_norm(self.a(x), None, None, self.g, self.b, training=True)))

    ann = annotate(M(), torch.randn(4, 3, 5, 5))
    (scale,) = [f for f in ann.families if f.kind == "scale"]
    rep = ann.verify(probes=2)
    assert rep.ok and next(c for c in rep.families if c.name == scale.name).max_ratio < 1e-9


# ----------------------------------------------------------------------------- round 4 (red team on
# shift transfer, MHA/class-token translations and shape queries): each failed before its fix

def _shift_family(ann):
    (fam,) = [f for f in ann.families if "↔" in f.name]
    return fam


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_rsub_alpha_is_the_coefficient_of_its_shift(frontend):
    """torch.rsub(a(x), p, alpha=2) = p − 2·a(x): the law is a.bias + p/2... as b_a/(-2) − p/1."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p, self.out = nn.Linear(4, 4), nn.Parameter(torch.randn(4)), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.rsub(self.a(x), self.p, alpha=2))

    m = M()
    ann = annotate(m, torch.randn(3, 4), frontend=frontend)
    fam = _shift_family(ann)
    got = ann.evaluate(m)[fam.name]
    want = (m.a.bias / -2 - m.p) if fam.terms[0].param == "a.bias" else (m.p - m.a.bias / -2)
    torch.testing.assert_close(got, want.detach())
    assert_sound(ann)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_addmm_beta_scales_the_bias_shift(frontend):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.W, self.b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))
            self.l, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.addmm(self.b, x, self.W, beta=2.0) + self.l(x))

    m = M()
    ann = annotate(m, torch.randn(3, 4), frontend=frontend)
    fam = _shift_family(ann)
    assert {t.param: t.coef for t in fam.terms} in ({"b": 0.5, "l.bias": -1.0}, {"b": -0.5, "l.bias": 1.0})
    assert_sound(ann)


def test_functional_embedding_negative_padding_idx_blocks_the_shift():
    """F.embedding(ids, W, padding_idx=-1) pads with the *last* row (no gradient)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.W, self.pos, self.out = nn.Parameter(torch.randn(7, 4)), nn.Parameter(torch.randn(5, 4)), nn.Linear(4, 3)

        def forward(self, ids):
            return self.out(F.embedding(ids, self.W, padding_idx=-1) + self.pos)

    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    ids[0, 0] = 6
    ann = annotate(M(), ids, frontend="fx")
    assert not [f for f in ann.families if "↔" in f.name]
    assert_sound(ann)


def test_a_comparison_of_a_shifted_tensor_breaks_the_translation():
    """head(LN(h) * (h > 0)): a shift of h's bias is absorbed by the LayerNorm but flips the mask,
    so θ + t·c is not a symmetry (the mask's zero derivative hides it from gradients only)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.head = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)

        def forward(self, x):
            h = self.a(x)
            return self.head(self.ln(h) * (h > 0).float())

    ann = annotate(M(), torch.randn(3, 4, 4))
    assert not [f for f in ann.families if f.kind == "translation"]
    assert_sound(ann)


def test_python_list_arithmetic_is_not_a_tensor_product():
    """torch.stack([cls[0]] * x.shape[0]): fx records list * int; read as an elementwise product
    it let each class-token entry rescale on its own (r ≈ 0.13)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls, self.ln, self.head = nn.Parameter(torch.randn(2, 4)), nn.LayerNorm(4), nn.Linear(4, 3)

        def forward(self, x):
            c = torch.stack([self.cls[0]] * x.shape[0]).unsqueeze(1)
            return self.head(self.ln(torch.cat([c, x], 1)))

    for frontend in ("fx", "auto"):
        ann = annotate(M(), torch.randn(3, 4, 4), frontend=frontend)
        assert_sound(ann)
        rescale = [f for f in ann.families if f.params == ["cls"] and f.kind == "rescale"]
        # only the unused row cls[1] is free entry by entry
        assert all(sorted(t.index.reshape(-1).tolist()) == [4, 5, 6, 7] for f in rescale for t in f.terms)


def test_keyword_operands_of_add_are_read():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p = nn.Linear(4, 4), nn.Parameter(torch.randn(4))

        def forward(self, x):
            return torch.add(input=self.a(x), other=self.p)

    for frontend in FRONTENDS:
        ann = annotate(M(), torch.randn(2, 4), frontend=frontend)
        assert [f.params for f in ann.families] == [["a.bias", "p"]]
        assert_sound(ann)


class _GradReversal(torch.autograd.Function):
    """The DANN gradient-reversal layer: identity forward, negated backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


class _GRLModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(_GradReversal.apply(torch.relu(self.a(x))))


def test_a_custom_autograd_function_is_opaque():
    """fx and export trace only a custom Function's forward; with a reversed backward, the
    traced rescale law ‖a row‖² + b² − ‖b col‖² is not conserved (‖…‖² + ‖b col‖² is). fx keeps
    the call as one opaque node (a breaker); export refuses with the reason."""
    ann = annotate(_GRLModel(), torch.randn(8, 4))
    assert ann.frontend == "fx" and ann.total_laws == 0
    assert any("custom autograd.Function" in b.why for b in ann.breakers)
    with pytest.raises(fxcons.CaptureError, match="custom autograd.Function _GradReversal"):
        fxcons.annotate(_GRLModel(), (torch.randn(8, 4),), frontend="export")
    m = _GRLModel().double()                     # the traced law is indeed false under autograd
    x = torch.randn(8, 4, dtype=torch.float64)
    out = m(x)
    ga, gab, gb = torch.autograd.grad((out * torch.randn_like(out)).sum(), [m.a.weight, m.a.bias, m.b.weight])
    d = 2 * ((m.a.weight * ga).sum(1) + m.a.bias * gab - (m.b.weight * gb).sum(0))
    assert d.abs().max() > 1e-3


class _HonestSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_an_honest_custom_function_is_exported_and_a_dishonest_one_is_not():
    from fxcons.capture import honest_function

    x = torch.randn(3, 4)
    assert honest_function(_HonestSquare, (x,))
    assert not honest_function(_GradReversal, (x,))


class _ViewThenAugmented(nn.Module):
    """h += p after r = h.ravel() (or a view of a view): r sees the write; fx records h + p and
    drops it, export keeps aten.add_ on a tensor a later view reads. Σp was reported (r ≈ 0.18)."""

    def __init__(self, nested: bool):
        super().__init__()
        self.a, self.p, self.out, self.nested = nn.Linear(4, 4), nn.Parameter(torch.randn(4)), nn.Linear(4, 2), nested

    def forward(self, x):
        h = self.a(x)
        r = h[:, :].view(3, 4) if self.nested else h.ravel()
        h += self.p
        return self.out(r.view(3, 4))


@pytest.mark.parametrize("nested", [False, True])
def test_an_augmented_write_seen_through_a_view_is_refused(nested):
    with pytest.raises(fxcons.CaptureError, match="augmented assignment|shares memory"):
        fxcons.annotate(_ViewThenAugmented(nested), (torch.randn(3, 4),))
