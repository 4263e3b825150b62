"""The worked cases of shared/cases/README.md (A-E), each derived by hand from LAWS.md and
checked with the oracle. Laws are compared as exact sets: (kind, exactness, terms with their
parameters, reductions, signs and unit indices)."""
import torch
from torch import nn

import fxcons

torch.manual_seed(0)


def law_set(ann):
    """{(kind, exactness, frozenset((param, reducer, coef, indices)))} per scalar law."""
    out = set()
    for f in ann.families:
        assert f.form == "diag" or f.form == "linear"
        for u in range(f.blocks):
            terms = frozenset((t.param, t.reducer, t.coef, tuple(sorted(t.index[u].tolist()))) for t in f.terms)
            out.add((f.kind, f.exactness, terms))
    return out


def assert_oracle(ann, probes=2):
    rep = ann.verify(probes=probes)
    assert rep.ok, [(f.name, f.max_ratio) for f in rep.families if not f.passed]
    assert rep.invariance is None or rep.invariance < 1e-6
    return rep


# ----------------------------------------------------------------------------- A
class CaseA(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.conv3 = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(nn.functional.relu6(self.conv1(x)))))


def test_case_a_relu6_stops_rescaling():
    ann = fxcons.annotate(CaseA(), (torch.randn(2, 3, 5, 5) * 3,))
    expected = {("rescale", "exact", frozenset({("conv2.weight", "sq0", 1.0, (c,)), ("conv2.bias", "sq", 1.0, (c,)),
                                                ("conv3.weight", "sq1", -1.0, (c,))})) for c in range(5)}
    assert law_set(ann) == expected
    assert ann.total_laws == 5
    assert any("relu6" in b.why for b in ann.breakers)
    assert_oracle(ann)


# ----------------------------------------------------------------------------- B
class CaseB(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_case_b_batchnorm_training():
    ann = fxcons.annotate(CaseB(), (torch.randn(4, 3, 5, 5),))
    expected = set()
    for c in range(4):
        expected.add(("scale", "eps", frozenset({("conv1.weight", "sq0", 1.0, (c,))})))
        expected.add(("translation", "exact", frozenset({("conv1.bias", "entry", 1.0, (c,))})))
        expected.add(("rescale", "exact", frozenset({("bn.weight", "sq", 1.0, (c,)), ("bn.bias", "sq", 1.0, (c,)),
                                                     ("conv2.weight", "sq1", -1.0, (c,))})))
    for c in range(3):
        expected.add(("rescale", "exact", frozenset({("conv2.weight", "sq0", 1.0, (c,)), ("conv2.bias", "sq", 1.0, (c,)),
                                                     ("fc.weight", "sq1", -1.0, (c,))})))
    assert law_set(ann) == expected and ann.total_laws == 15
    rep = assert_oracle(ann)
    assert {f.exactness for f in rep.families if f.kind == "scale"} == {"eps"}


def test_case_b_eval_mode_drops_bn_laws():
    m = CaseB().eval()
    ann = fxcons.annotate(m, (torch.randn(4, 3, 5, 5),), training=False)
    assert ann.counts()["scale"] == 0 and ann.counts()["translation"] == 0
    assert ann.total_laws == 7  # bn affine | conv2 (4) and conv2 | fc (3)
    assert any("eval mode" in b.why for b in ann.breakers)
    assert_oracle(ann)


def test_case_b_not_a_law_is_detected_by_oracle():
    """rsq(conv1.W)[c] + b_c² − γ_c² (BN output does not scale with its input) fails the oracle."""
    from fxcons.lawset import LawFamily, LawSet, Term
    import numpy as np

    ann = fxcons.annotate(CaseB(), (torch.randn(4, 3, 5, 5),))
    idx = np.arange(4)[:, None]
    bad = LawFamily("bad", "rescale", "exact", "diag", [Term("conv1.weight", "sq0", 1.0, idx),
                                                         Term("conv1.bias", "sq", 1.0, idx),
                                                         Term("bn.weight", "sq", -1.0, idx)])
    ann.laws = LawSet([bad], ann.laws.param_shapes)
    rep = ann.verify(probes=1, invariance=False)
    assert not rep.ok and rep.max_ratio > 1e-4


# ----------------------------------------------------------------------------- C
class CaseC(nn.Module):
    def __init__(self, stem: bool):
        super().__init__()
        self.stem = nn.Linear(5, 4) if stem else None
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if self.stem is not None:
            x = torch.relu(self.stem(x))
        return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))


def test_case_c_linear_used_twice_on_data_has_no_law():
    ann = fxcons.annotate(CaseC(False), (torch.randn(6, 4),))
    assert ann.total_laws == 0


def test_case_c_linear_used_twice_after_stem():
    ann = fxcons.annotate(CaseC(True), (torch.randn(6, 5),))
    expected = {("rescale", "exact", frozenset({
        ("stem.weight", "sq0", 1.0, (j,)), ("stem.bias", "sq", 1.0, (j,)), ("shared.weight", "sq0", 1.0, (j,)),
        ("shared.bias", "sq", 1.0, (j,)), ("shared.weight", "sq1", -1.0, (j,)), ("head.weight", "sq1", -1.0, (j,))}))
        for j in range(4)}
    assert law_set(ann) == expected
    assert_oracle(ann)


# ----------------------------------------------------------------------------- D
class CaseD(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(4, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.gconv = nn.Conv2d(6, 4, 3, padding=1, groups=2)
        self.last = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        x = torch.relu(self.pw1(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.gconv(x))
        return self.last(x)


def test_case_d_depthwise_and_grouped():
    ann = fxcons.annotate(CaseD(), (torch.randn(2, 4, 5, 5),))
    expected = set()
    for e in range(6):
        # dw reads channel e only through its own filter: its column unknown is (group e, 0) = e
        expected.add(("rescale", "exact", frozenset({("pw1.weight", "sq0", 1.0, (e,)), ("pw1.bias", "sq", 1.0, (e,)),
                                                     ("dw.weight", "sq1", -1.0, (e,))})))
        g = e // 3
        # gconv column unknowns are indexed (group, in-channel-within-group) = g*3 + (e - 3g) = e
        expected.add(("rescale", "exact", frozenset({("dw.weight", "sq0", 1.0, (e,)), ("dw.bias", "sq", 1.0, (e,)),
                                                     ("gconv.weight", "sq1", -1.0, (e,))})))
    for c in range(4):
        expected.add(("rescale", "exact", frozenset({("gconv.weight", "sq0", 1.0, (c,)), ("gconv.bias", "sq", 1.0, (c,)),
                                                     ("last.weight", "sq1", -1.0, (c,))})))
    assert law_set(ann) == expected and ann.total_laws == 16
    assert_oracle(ann)
    # the grouped-column reduction is exactly ‖gconv.W[2g:2g+2, e−3g]‖²
    f = next(f for f in ann.families if any(t.param == "gconv.weight" and t.coef < 0 for t in f.terms))
    W = ann.model.gconv.weight.detach()
    t = next(t for t in f.terms if t.param == "gconv.weight")
    from fxcons.lawset import reduce_tensor

    red = reduce_tensor(W.square(), "sq1", t.groups)
    for e in range(6):
        g = e // 3
        assert torch.allclose(red[e], W[2 * g:2 * g + 2, e - 3 * g].square().sum())


# ----------------------------------------------------------------------------- E
class CaseE(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x)[0]


def test_case_e_multihead_attention():
    """16 laws: per head h (rows 2h:2h+2 of the q, k, v blocks of in_proj, columns 2h:2h+2 of
    out_proj) the 3 upper-triangular entries of [Q_h bq_h][Q_h bq_h]ᵀ − [K_h bk_h][K_h bk_h]ᵀ and
    of [V_h bv_h][V_h bv_h]ᵀ − O_hᵀO_h, plus the 4 key-bias entries."""
    import numpy as np
    from fxcons.lawset import LawFamily, LawSet, Term

    torch.manual_seed(0)
    model = CaseE()
    ann = fxcons.annotate(model, (torch.randn(2, 4, 4),))
    assert {k: v for k, v in ann.counts().items() if v} == {"attention_qk": 6, "attention_vo": 6, "translation": 4}
    rows = {}
    for f in ann.families:
        if f.form == "gram":
            for t in f.terms:
                rows.setdefault((f.kind, t.param, t.axis, t.coef > 0), []).append(t.index.tolist())
    q, k, v = [[[0, 1], [2, 3]]], [[[4, 5], [6, 7]]], [[[8, 9], [10, 11]]]
    assert rows[("attention_qk", "mha.in_proj_weight", 0, True)] == q
    assert rows[("attention_qk", "mha.in_proj_weight", 0, False)] == k
    assert rows[("attention_vo", "mha.in_proj_weight", 0, True)] == v
    assert rows[("attention_vo", "mha.out_proj.weight", 1, False)] == [[[0, 1], [2, 3]]]
    (kb,) = [f for f in ann.families if f.kind == "translation"]
    assert kb.params == ["mha.in_proj_bias"] and kb.terms[0].index.ravel().tolist() == [4, 5, 6, 7]
    assert_oracle(ann)

    # not laws: a block mixing the two heads, V/O without the value bias, a head's query norm alone
    def fails(terms, form="gram"):
        ann.laws = LawSet([LawFamily("bad", "attention_vo", "exact", form, terms)], ann.laws.param_shapes)
        return not ann.verify(probes=1, invariance=False).ok

    mixed = np.array([[1, 2]])
    assert fails([Term("mha.in_proj_weight", "gram", 1.0, mixed, axis=0),
                  Term("mha.in_proj_bias", "gram", 1.0, mixed, axis=0),
                  Term("mha.in_proj_weight", "gram", -1.0, mixed + 4, axis=0),
                  Term("mha.in_proj_bias", "gram", -1.0, mixed + 4, axis=0)])
    head0 = np.array([[0, 1]])
    assert fails([Term("mha.in_proj_weight", "gram", 1.0, head0 + 8, axis=0),
                  Term("mha.out_proj.weight", "gram", -1.0, head0, axis=1)])
    assert fails([Term("mha.in_proj_weight", "sq0", 1.0, np.array([[0], [1]]))], form="diag")
