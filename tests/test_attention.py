"""Attention heads (LAWS.md §3.3): per-head query/key and value/output laws, key bias.

Counting rule used below: a head of dimension d gives d(d+1)/2 entries for the query/key law
([Q_h bq_h][Q_h bq_h]ᵀ − [K_h bk_h][K_h bk_h]ᵀ) and d(d+1)/2 for the value/output law
([V_h bv_h][V_h bv_h]ᵀ − O_hᵀO_h), plus d key-bias entries (linear laws). Grouped-query attention
has one law of each kind per key/value group; RoPE leaves d/2 per-plane scalings for query/key.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxcons
from fxcons.lawset import LawFamily, Term

torch.manual_seed(0)


def tri(d: int) -> int:
    return d * (d + 1) // 2


def by_kind(ann) -> dict[str, int]:
    return {k: v for k, v in ann.counts().items() if v}


def assert_oracle(ann, probes: int = 2):
    rep = ann.verify(probes=probes)
    assert rep.ok, [(f.name, f.max_ratio) for f in rep.families if not f.passed]
    assert rep.max_ratio_exact < 1e-9
    if rep.invariance is not None:
        assert rep.invariance < 1e-8
    return rep


def gram(ann, kind):
    return [f for f in ann.families if f.kind == kind and f.form == "gram"]


# ----------------------------------------------------------------------------- nn.MultiheadAttention

class MHA(nn.Module):
    def __init__(self, e=8, h=2, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(e, h, batch_first=True, **kw)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def test_mha_exact_law_set():
    ann = fxcons.annotate(MHA(), (torch.randn(2, 5, 8),))
    # 2 heads × (10 qk + 10 vo) + 8 key-bias entries, nothing else (inputs and outputs are data)
    assert by_kind(ann) == {"attention_qk": 20, "attention_vo": 20, "translation": 8}
    assert ann.total_laws == 48
    (qk,) = gram(ann, "attention_qk")
    (vo,) = gram(ann, "attention_vo")
    W, b, O = "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight"
    heads = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    got = sorted((t.param, t.axis, t.coef, t.index.tolist()) for t in qk.terms)
    want = sorted([(W, 0, 1.0, heads.tolist()), (b, 0, 1.0, heads.tolist()),
                   (W, 0, -1.0, (heads + 8).tolist()), (b, 0, -1.0, (heads + 8).tolist())])
    assert got == want
    got = sorted((t.param, t.axis, t.coef, t.index.tolist()) for t in vo.terms)
    want = sorted([(W, 0, 1.0, (heads + 16).tolist()), (b, 0, 1.0, (heads + 16).tolist()),
                   (O, 1, -1.0, heads.tolist())])
    assert got == want
    (kb,) = [f for f in ann.families if f.kind == "translation"]
    assert kb.terms[0].param == b and kb.terms[0].reducer == "entry"
    assert kb.terms[0].index[:, 0].tolist() == list(range(8, 16))
    assert_oracle(ann)


def _head_transform(mha: nn.MultiheadAttention, h: int, M: torch.Tensor, rows_of) -> None:
    """Q_h → M Q_h, K_h → M⁻ᵀ K_h, V_h → M V_h, O_h → O_h M⁻¹ (biases with their rows)."""
    E = mha.embed_dim
    Minv = torch.linalg.inv(M)
    W, b, O = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight
    q, k, v = (slice(blk * E + rows_of(h).start, blk * E + rows_of(h).stop) for blk in range(3))
    with torch.no_grad():
        for rows, T in ((q, M), (k, Minv.T), (v, M)):
            W[rows] = T @ W[rows]
            b[rows] = T @ b[rows]
        cols = rows_of(h)
        O[:, cols] = O[:, cols] @ Minv


def test_mha_invariance_random_invertible_per_head():
    m = MHA(8, 2).double().train()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    before = m(x)
    d = m.attn.head_dim
    g = torch.Generator().manual_seed(1)
    for h in range(2):
        M = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
        _head_transform(m.attn, h, M, lambda h: slice(h * d, (h + 1) * d))
    with torch.no_grad():  # key-bias shift
        m.attn.in_proj_bias[8:16] += torch.randn(8, generator=g, dtype=torch.float64)
    after = m(x)
    assert torch.allclose(before, after, atol=1e-10, rtol=1e-9)


def test_no_symmetry_across_heads():
    """A matrix mixing two heads changes the output; no law block spans two heads."""
    m = MHA(8, 2).double()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    before = m(x)
    g = torch.Generator().manual_seed(2)
    M = torch.eye(8, dtype=torch.float64) + 0.5 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    _head_transform(m.attn, 0, M, lambda h: slice(0, 8))  # one "head" made of both heads
    assert (m(x) - before).norm() / before.norm() > 1e-2

    ann = fxcons.annotate(MHA(8, 2), (torch.randn(2, 5, 8),))
    for fam in gram(ann, "attention_qk") + gram(ann, "attention_vo"):
        for t in fam.terms:
            for block in t.index:
                assert len({int(i) % 8 // 4 for i in block}) == 1
    # the law written on a block of rows from both heads is rejected by the oracle
    cross = np.array([[0, 1, 4, 5]])
    W, b = "attn.in_proj_weight", "attn.in_proj_bias"
    fake = LawFamily("cross-head", "attention_qk", "exact", "gram",
                     [Term(W, "gram", 1.0, cross), Term(b, "gram", 1.0, cross),
                      Term(W, "gram", -1.0, cross + 8), Term(b, "gram", -1.0, cross + 8)])
    ann.laws.families = [fake]
    rep = ann.verify(probes=2, invariance=False)
    assert rep.max_ratio > 1e-3


def test_mha_cross_attention_and_sequence_first():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)  # (seq, batch, feature)

        def forward(self, x, y):
            out, w = self.attn(x, y, y)  # need_weights: head-averaged probabilities also returned
            return out, w

    ann = fxcons.annotate(Cross(), (torch.randn(5, 2, 8), torch.randn(7, 2, 8)))
    assert by_kind(ann) == {"attention_qk": 20, "attention_vo": 20, "translation": 8}
    assert_oracle(ann)


# ----------------------------------------------------------------------------- separate projections

class Heads(nn.Module):
    """q/k/v/o Linear layers, head reshapes, several spellings of the attention core."""

    def __init__(self, e=12, h=3, core="matmul", mask="none", bias=True):
        super().__init__()
        self.h, self.d, self.core, self.mask = h, e // h, core, mask
        self.q, self.k, self.v, self.o = (nn.Linear(e, e, bias=bias) for _ in range(4))
        self.drop = nn.Dropout(0.1)  # on the probabilities: changes no law
        self.register_buffer("bias_mask", torch.randn(5, 5))  # additive logits bias (5 tokens)

    def split(self, x):
        B, S, _ = x.shape
        return x.view(B, S, self.h, self.d).transpose(1, 2)

    def forward(self, x):
        B, S, E = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.core == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=self.mask == "causal")
        else:
            if self.core == "einsum":
                s = torch.einsum("bhld,bhsd->bhls", q, k) / math.sqrt(self.d)
            else:
                s = q @ k.transpose(-2, -1) * self.d ** -0.5
            if self.mask == "causal":
                s = s.masked_fill(torch.ones_like(s[0, 0], dtype=torch.bool).triu(1), float("-inf"))
            elif self.mask == "additive":
                s = s + self.bias_mask
            p = self.drop(s.softmax(-1))
            o = torch.einsum("bhls,bhsd->bhld", p, v) if self.core == "einsum" else p @ v
        return self.o(o.transpose(1, 2).reshape(B, S, E))


@pytest.mark.parametrize("core,mask", [("matmul", "causal"), ("matmul", "additive"), ("einsum", "none"),
                                       ("sdpa", "causal")])
def test_separate_projections(core, mask):
    ann = fxcons.annotate(Heads(core=core, mask=mask), (torch.randn(2, 5, 12),))
    h, d = 3, 4
    assert by_kind(ann) == {"attention_qk": h * tri(d), "attention_vo": h * tri(d), "translation": h * d}
    (qk,) = gram(ann, "attention_qk")
    assert {t.param for t in qk.terms} == {"q.weight", "q.bias", "k.weight", "k.bias"}
    assert qk.blocks == h and qk.terms[0].index.tolist()[1] == [4, 5, 6, 7]
    kb = [f for f in ann.families if f.kind == "translation"]
    assert {t.param for f in kb for t in f.terms} == {"k.bias"}
    assert_oracle(ann)


def test_without_biases():
    ann = fxcons.annotate(Heads(core="sdpa", bias=False), (torch.randn(2, 5, 12),))
    assert by_kind(ann) == {"attention_qk": 3 * tri(4), "attention_vo": 3 * tri(4)}
    assert_oracle(ann)


class Fused(nn.Module):
    """One Linear makes q, k and v (timm / GPT-2 style), split by chunk, split or unbind."""

    def __init__(self, e=12, h=3, how="unbind"):
        super().__init__()
        self.h, self.d, self.how = h, e // h, how
        self.qkv = nn.Linear(e, 3 * e)
        self.proj = nn.Linear(e, e)

    def forward(self, x):
        B, S, E = x.shape
        y = self.qkv(x)
        if self.how == "unbind":
            q, k, v = y.reshape(B, S, 3, self.h, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            parts = y.chunk(3, dim=-1) if self.how == "chunk" else y.split(E, dim=2)
            q, k, v = (p.reshape(B, S, self.h, self.d).transpose(1, 2) for p in parts)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, S, E))


@pytest.mark.parametrize("how", ["unbind", "chunk", "split"])
def test_fused_qkv(how):
    ann = fxcons.annotate(Fused(how=how), (torch.randn(2, 5, 12),))
    assert by_kind(ann) == {"attention_qk": 3 * tri(4), "attention_vo": 3 * tri(4), "translation": 12}
    (qk,) = gram(ann, "attention_qk")
    rows = {t.coef: t.index.tolist() for t in qk.terms if t.param == "qkv.weight"}
    assert rows[1.0] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert rows[-1.0] == [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]
    (kb,) = [f for f in ann.families if f.kind == "translation"]
    assert kb.terms[0].index[:, 0].tolist() == list(range(12, 24))
    assert_oracle(ann)


# ----------------------------------------------------------------------------- GQA and RoPE

def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class GQA(nn.Module):
    """8 query heads, 2 key/value heads of dimension 4 (LLaMA layout); optional RoPE."""

    def __init__(self, rope=False, gqa="repeat", bias=False):
        super().__init__()
        self.h, self.g, self.d, self.rope, self.gqa = 4, 2, 4, rope, gqa
        e = self.h * self.d
        self.q = nn.Linear(e, self.h * self.d, bias=bias)
        self.k = nn.Linear(e, self.g * self.d, bias=bias)
        self.v = nn.Linear(e, self.g * self.d, bias=bias)
        self.o = nn.Linear(self.h * self.d, e, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.d, 2).float() / self.d))
        ang = torch.outer(torch.arange(16).float(), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())

    def forward(self, x):
        B, S, E = x.shape
        q = self.q(x).view(B, S, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(B, S, self.g, self.d).transpose(1, 2)
        v = self.v(x).view(B, S, self.g, self.d).transpose(1, 2)
        if self.rope:
            cos, sin = self.cos[:S], self.sin[:S]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if self.gqa == "repeat":
            rep = self.h // self.g
            k = k[:, :, None].expand(B, self.g, rep, S, self.d).reshape(B, self.h, S, self.d)
            v = v[:, :, None].expand(B, self.g, rep, S, self.d).reshape(B, self.h, S, self.d)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(o.transpose(1, 2).reshape(B, S, E))


@pytest.mark.parametrize("gqa", ["repeat", "enable_gqa"])
def test_grouped_query_attention(gqa):
    ann = fxcons.annotate(GQA(gqa=gqa, bias=True), (torch.randn(2, 6, 16),))
    g, d = 2, 4
    assert by_kind(ann) == {"attention_qk": g * tri(d), "attention_vo": g * tri(d), "translation": g * d}
    (qk,) = gram(ann, "attention_qk")
    # Σ_{h∈g} [Q_h bq_h][Q_h bq_h]ᵀ − [K_g bk_g][K_g bk_g]ᵀ: query heads 2g and 2g+1 share group g
    q_rows = sorted(t.index.tolist() for t in qk.terms if t.param == "q.weight")
    assert q_rows == [[[0, 1, 2, 3], [8, 9, 10, 11]], [[4, 5, 6, 7], [12, 13, 14, 15]]]
    (vo,) = gram(ann, "attention_vo")
    assert sorted(t.index.tolist() for t in vo.terms if t.param == "o.weight") == q_rows
    assert_oracle(ann)


def test_rope_leaves_per_plane_scales():
    ann = fxcons.annotate(GQA(rope=True), (torch.randn(2, 6, 16),))
    g, d = 2, 4
    # query/key: one scale per group and rotation plane (d/2 each); value/output keeps GL(d)
    assert by_kind(ann) == {"rescale": g * d // 2, "attention_vo": g * tri(d)}
    (planes,) = [f for f in ann.families if f.kind == "rescale"]
    assert {(t.param, t.coef) for t in planes.terms} == {("q.weight", 1.0), ("k.weight", -1.0)} or \
        {(t.param, t.coef) for t in planes.terms} == {("q.weight", -1.0), ("k.weight", 1.0)}
    # each law: the rows of plane p (coordinates p and p + d/2) of both query heads of a group
    # (heads 0, 1 read key/value group 0; heads 2, 3 group 1)
    q = [t for t in planes.terms if t.param == "q.weight"]
    laws = sorted(sorted(i for t in q for i in t.index[u].tolist()) for u in range(planes.blocks))
    assert laws == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert_oracle(ann)


# ----------------------------------------------------------------------------- what breaks a head

def test_active_dropout_on_queries_breaks_query_key_law():
    class QDrop(Heads):
        def split(self, x):
            return nn.functional.dropout(super().split(x), 0.1, self.training)

    ann = fxcons.annotate(QDrop(core="sdpa"), (torch.randn(2, 5, 12),))
    assert "attention_qk" not in by_kind(ann) and "attention_vo" not in by_kind(ann)
    assert any(b.family == "attention" and "dropout" in b.why for b in ann.breakers)
    assert_oracle(ann)


def test_query_used_elsewhere_has_no_query_key_law():
    class Leak(Heads):
        def forward(self, x):
            return super().forward(x) + self.q(x).relu().sum(-1, keepdim=True)

    ann = fxcons.annotate(Leak(core="sdpa"), (torch.randn(2, 5, 12),))
    assert "attention_qk" not in by_kind(ann)
    assert by_kind(ann)["attention_vo"] == 3 * tri(4)
    assert_oracle(ann)


def test_shared_query_key_projection_conflicts():
    """One Linear used for queries and keys: Q → MQ and K → M⁻ᵀK cannot both hold (tied
    parameter with conflicting uses): no query/key law, not even the diagonal one."""

    class Shared(Heads):
        def forward(self, x):
            B, S, E = x.shape
            q, k, v = self.split(self.q(x)), self.split(self.q(x)), self.split(self.v(x))
            o = F.scaled_dot_product_attention(q, k, v)
            return self.o(o.transpose(1, 2).reshape(B, S, E))

    ann = fxcons.annotate(Shared(core="sdpa"), (torch.randn(2, 5, 12),))
    assert "attention_qk" not in by_kind(ann)
    assert not any("q.weight" in f.params and f.kind != "attention_vo" for f in ann.families)
    assert_oracle(ann)


def test_frozen_projection_has_no_head_law():
    m = Heads(core="sdpa")
    m.k.weight.requires_grad_(False)
    ann = fxcons.annotate(m, (torch.randn(2, 5, 12),))
    assert "attention_qk" not in by_kind(ann)
    assert by_kind(ann)["attention_vo"] == 3 * tri(4)
    assert_oracle(ann)


@pytest.mark.parametrize("act", [nn.GELU, nn.SiLU])
def test_no_rescale_through_gelu_silu(act):
    m = nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 3))
    ann = fxcons.annotate(m, (torch.randn(4, 6),))
    assert not [f for f in ann.families if f.kind in ("rescale", "gl")]
    assert any("not positively homogeneous" in b.why for b in ann.breakers)


def test_swiglu_only_the_linear_unit_rescales():
    class SwiGLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w3, self.w2 = nn.Linear(6, 8, bias=False), nn.Linear(6, 8, bias=False), nn.Linear(8, 6)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    ann = fxcons.annotate(SwiGLU(), (torch.randn(4, 6),))
    (fam,) = ann.families
    # ‖W3[j]‖² − ‖W2[:, j]‖², one per hidden unit; W1 appears nowhere
    assert fam.kind == "rescale" and fam.count == 8
    assert {(t.param, t.reducer, t.coef) for t in fam.terms} == {("w3.weight", "sq0", 1.0), ("w2.weight", "sq1", -1.0)}
    assert_oracle(ann)
