"""The reference models of ``fxcons.models``: they build, run, and have exactly the laws their
docstrings derive from LAWS.md (counts per kind, and law *values* against hand-written
formulas), all passing the oracle."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxcons
from fxcons.models import REGISTRY
from fxcons.specs import load_spec

KINDS = ("rescale", "gl", "scale", "translation", "attention_qk", "attention_vo")


def counts(**kw: int) -> dict[str, int]:
    return {k: kw.get(k, 0) for k in KINDS}


def by_params(ann, model: nn.Module) -> dict[frozenset, torch.Tensor]:
    """Law values of every family, keyed by the set of parameters the family involves."""
    values = ann.evaluate(model)
    out = {}
    for f in ann.families:
        key = frozenset(f.params)
        assert key not in out, f"two families on {sorted(key)}"
        out[key] = values[f.name].detach()
    return out


def assert_values(found: dict, params: set[str], expected: torch.Tensor, ordered: bool = True) -> None:
    got = found[frozenset(params)]
    expected = expected.detach().reshape(-1)
    if not ordered:  # matrix laws: compare the multiset of entries
        got, expected = got.sort().values, expected.sort().values
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def assert_oracle(ann, probes: int = 2) -> None:
    rep = ann.verify(probes=probes)
    assert rep.checked == ann.total_laws
    assert rep.ok and rep.failed == 0, [f.name for f in rep.families if not f.passed]
    assert rep.max_ratio_exact < 1e-10
    assert rep.max_ratio < 1e-4
    if rep.invariance is not None:
        assert rep.invariance < 1e-6


def rsq(w: torch.Tensor) -> torch.Tensor:
    return w.pow(2).flatten(1).sum(1)


def csq(w: torch.Tensor) -> torch.Tensor:
    return w.pow(2).transpose(0, 1).flatten(1).sum(1)


def upper(H: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu_indices(H.shape[-1], H.shape[-1])
    return H[..., i, j]


# ----------------------------------------------------------------------------- registry

OUT_SHAPES = {
    "resnet18_cifar": (2, 10), "relu_mlp": (16, 3), "deep_linear_mlp": (16, 3),
    "small_cnn": (2, 10), "small_cnn_bn": (4, 10), "tiny_transformer": (4, 5),
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_factory_builds_and_runs(name):
    model, inputs = REGISTRY[name]()
    assert isinstance(model, nn.Module) and isinstance(inputs, tuple)
    assert any(p.requires_grad for p in model.parameters())
    assert tuple(model(*inputs).shape) == OUT_SHAPES[name]
    assert "law" in (REGISTRY[name].__doc__ or "").lower()   # each factory states its laws


def test_factories_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, xa = REGISTRY["small_cnn"]()
    b, xb = REGISTRY["small_cnn"]()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(xa[0], xb[0])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c, _ = REGISTRY["small_cnn"](seed=1)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_model_spec_builds_reference_models():
    lm = load_spec("models:relu_mlp?batch=4")
    assert tuple(lm.example_inputs[0].shape) == (4, 8)
    lm = load_spec("models:resnet18_cifar?width=8&num_classes=3")
    assert tuple(lm.model(*lm.example_inputs).shape) == (2, 3)
    with pytest.raises(ValueError, match="even"):
        REGISTRY["small_cnn"](size=7)


# ----------------------------------------------------------------------------- MLPs

def test_relu_mlp_laws():
    model, x = REGISTRY["relu_mlp"]()
    ann = fxcons.annotate(model, x)
    assert ann.counts() == counts(rescale=48)
    found = by_params(ann, model)
    lin = [m for m in model if isinstance(m, nn.Linear)]
    for k in range(3):  # Sequential indices 0, 2, 4, 6
        a, b = lin[k], lin[k + 1]
        assert_values(found, {f"{2 * k}.weight", f"{2 * k}.bias", f"{2 * k + 2}.weight"},
                      rsq(a.weight) + a.bias ** 2 - csq(b.weight))
    assert_oracle(ann)
    head = fxcons.annotate(model, x, head="classification")
    assert head.counts() == counts(rescale=48, translation=17)
    found = by_params(head, model)
    assert_values(found, {"6.weight"}, lin[3].weight.sum(0))
    assert_values(found, {"6.bias"}, lin[3].bias.sum())
    assert_oracle(head)


def test_relu_mlp_count_follows_hidden_widths():
    model, x = REGISTRY["relu_mlp"](dims=(5, 7, 3, 2))
    ann = fxcons.annotate(model, x)
    assert ann.counts() == counts(rescale=10)


def test_deep_linear_mlp_gl_laws():
    model, x = REGISTRY["deep_linear_mlp"]()
    ann = fxcons.annotate(model, x)
    assert ann.counts() == counts(gl=20)          # 2 bottlenecks of width 4: 2 · 4·5/2
    found = by_params(ann, model)
    for k in range(2):
        V, b, U = model[k].weight, model[k].bias, model[k + 1].weight
        H = V @ V.T + torch.outer(b, b) - U.T @ U
        assert_values(found, {f"{k}.weight", f"{k}.bias", f"{k + 1}.weight"}, upper(H), ordered=False)
    assert_oracle(ann)
    head = fxcons.annotate(model, x, head="classification")
    assert head.counts() == counts(gl=20, translation=5)
    assert_oracle(head)


# ----------------------------------------------------------------------------- CNNs

def test_small_cnn_laws():
    model, x = REGISTRY["small_cnn"]()
    ann = fxcons.annotate(model, x)
    assert ann.counts() == counts(rescale=24)
    found = by_params(ann, model)
    c1, c2, fc = model[0], model[2], model[6]
    assert_values(found, {"0.weight", "0.bias", "2.weight"}, rsq(c1.weight) + c1.bias ** 2 - csq(c2.weight))
    # flatten maps channel c to the 4·4 = 16 columns 16c .. 16c+15 of fc
    assert_values(found, {"2.weight", "2.bias", "6.weight"},
                  rsq(c2.weight) + c2.bias ** 2 - fc.weight.pow(2).sum(0).reshape(16, 16).sum(1))
    assert_oracle(ann)
    head = fxcons.annotate(model, x, head="classification")
    assert head.counts() == counts(rescale=24, translation=16 * 16 + 1)


def test_small_cnn_bn_laws():
    model, x = REGISTRY["small_cnn_bn"]()
    ann = fxcons.annotate(model, x)
    assert ann.counts() == counts(scale=24, rescale=24)
    assert {f.exactness for f in ann.families if f.kind == "scale"} == {"eps"}
    found = by_params(ann, model)
    conv1, bn1, conv2, bn2, fc = model[0], model[1], model[3], model[4], model[8]
    assert_values(found, {"0.weight"}, rsq(conv1.weight))
    assert_values(found, {"3.weight"}, rsq(conv2.weight))
    assert_values(found, {"1.weight", "1.bias", "3.weight"}, bn1.weight ** 2 + bn1.bias ** 2 - csq(conv2.weight))
    assert_values(found, {"4.weight", "4.bias", "8.weight"},
                  bn2.weight ** 2 + bn2.bias ** 2 - fc.weight.pow(2).sum(0).reshape(16, 16).sum(1))
    assert_oracle(ann)


def test_small_cnn_bn_conv_bias_and_eval_mode():
    model, x = REGISTRY["small_cnn_bn"](conv_bias=True)
    ann = fxcons.annotate(model, x)
    assert ann.counts() == counts(scale=24, rescale=24, translation=24)
    found = by_params(ann, model)
    assert_values(found, {"0.bias"}, model[0].bias)      # zero gradient: BN removes the mean
    assert_oracle(ann)
    ev = fxcons.annotate(model, x, training=False)       # BN is a fixed affine map
    assert ev.counts() == counts(rescale=24)
    assert_oracle(ev)


def test_resnet18_cifar_small_width_counts():
    model, x = REGISTRY["resnet18_cifar"](width=8, num_classes=3)
    ann = fxcons.annotate(model, x, head="classification")
    assert ann.counts() == counts(scale=75 * 8, rescale=45 * 8, translation=8 * 8 + 1)
    assert_oracle(ann, probes=1)


# ----------------------------------------------------------------------------- Transformer

def test_tiny_transformer_laws():
    model, x = REGISTRY["tiny_transformer"]()
    assert x[0].dtype == torch.long
    ann = fxcons.annotate(model, x)
    c = ann.counts()
    # see fxcons.models.transformer: 288 + 288 attention, 288 rescale, 1 stream scale law,
    # 220 LayerNorm translations + 64 key-bias entries + 32 tok ↔ pos shift transfers = 316
    assert {k: c[k] for k in ("attention_qk", "attention_vo", "rescale", "scale", "gl")} == \
        {"attention_qk": 288, "attention_vo": 288, "rescale": 288, "scale": 1, "gl": 0}
    assert c["translation"] == 316
    found = by_params(ann, model)
    d, h, dh = 32, 4, 8
    assert_values(found, {"tok.weight"}, model.tok.weight.sum(1))
    assert_values(found, {"tok.weight", "pos"}, model.tok.weight.sum(0) - model.pos.sum(0))
    assert_values(found, {"pos"}, model.pos.sum(1))
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        assert_values(found, {f"{p}.fc1.weight", f"{p}.fc1.bias", f"{p}.fc2.weight"},
                      rsq(blk.fc1.weight) + blk.fc1.bias ** 2 - csq(blk.fc2.weight))
        assert_values(found, {f"{p}.ln2.weight", f"{p}.ln2.bias", f"{p}.fc1.weight"},
                      blk.ln2.weight ** 2 + blk.ln2.bias ** 2 - csq(blk.fc1.weight))
        W, B = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        assert_values(found, {f"{p}.ln1.weight", f"{p}.ln1.bias", f"{p}.attn.in_proj_weight"},
                      blk.ln1.weight ** 2 + blk.ln1.bias ** 2 - csq(W))
        assert_values(found, {f"{p}.fc2.weight"}, blk.fc2.weight.sum(0))
        assert_values(found, {f"{p}.fc2.bias"}, blk.fc2.bias.sum())
        assert_values(found, {f"{p}.attn.in_proj_bias"}, B[d:2 * d])       # key bias entries
        WB = torch.cat([W, B[:, None]], 1).reshape(3, h, dh, d + 1)   # (q|k|v, head, row, col)
        Q, K, V = WB[0], WB[1], WB[2]
        O = blk.attn.out_proj.weight.reshape(d, h, dh).permute(1, 0, 2)  # (head, out, dh)
        assert_values(found, {f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias"},
                      upper(Q @ Q.transpose(1, 2) - K @ K.transpose(1, 2)), ordered=False)
        assert_values(found, {f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias", f"{p}.attn.out_proj.weight"},
                      upper(V @ V.transpose(1, 2) - O.transpose(1, 2) @ O), ordered=False)
    writers = {"tok.weight", "pos"} | {f"blocks.{i}.{m}.{w}" for i in range(2) for m in ("attn.out_proj", "fc2")
                                       for w in ("weight", "bias")}
    assert_values(found, writers, sum(p.pow(2).sum() for n, p in model.named_parameters() if n in writers))
    assert_oracle(ann)
    head = fxcons.annotate(model, x, head="classification")
    assert head.counts()["translation"] - c["translation"] == 33   # head column sums + bias sum
    found = by_params(head, model)
    assert_values(found, {"head.weight"}, model.head.weight.sum(0))
    assert_oracle(head)


def test_tiny_transformer_out_proj_translations_are_laws():
    """1ᵀ W_out and Σ b_out have zero gradient: the stream is read only by LayerNorms (§3.5)."""
    model, _ = REGISTRY["tiny_transformer"]()
    model = model.double()
    ids = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(0))
    out = model(ids)
    for blk in model.blocks:
        w, b = blk.attn.out_proj.weight, blk.attn.out_proj.bias
        gw, gb = torch.autograd.grad((out * torch.randn_like(out)).sum(), [w, b], retain_graph=True)
        assert gw.sum(0).abs().max() < 1e-12 * gw.abs().max() * 32
        assert gb.sum().abs() < 1e-12 * gb.abs().max() * 32
        assert gw.abs().max() > 1e-3                                    # the weight itself is live
    ann = fxcons.annotate(*REGISTRY["tiny_transformer"]())            # and fxcons emits them
    found = by_params(ann, model)
    for i, blk in enumerate(model.blocks):
        w, b = blk.attn.out_proj.weight, blk.attn.out_proj.bias
        assert_values(found, {f"blocks.{i}.attn.out_proj.weight"}, w.sum(0))
        assert_values(found, {f"blocks.{i}.attn.out_proj.bias"}, b.sum())


def test_tiny_transformer_gelu_drops_mlp_rescaling():
    model, x = REGISTRY["tiny_transformer"](activation="gelu", layers=1)
    ann = fxcons.annotate(model, x)
    assert not any("fc1.bias" in f.params and f.kind == "rescale" for f in ann.families)
    assert ann.counts()["rescale"] == 3 * 32     # ln1 → in_proj, ln2 → fc1, ln_f → head
    with pytest.raises(ValueError, match="activation"):
        REGISTRY["tiny_transformer"](activation="tanh")
