"""Exact law counts of real models, hand-derived from LAWS.md §3.1/§3.4/§3.5/§3.6, and the oracle.

Training mode, no head. Notation: "scale" = §3.4 normalization laws (eps), "rescale" = §3.1/§3.6
neuron/stream rescaling (exact), "translation" = §3.5 linear laws. Each derivation is written
next to its test; the oracle (``Annotation.verify``: LAWS.md §2 plus a direct invariance check
where the model has at most 20000 laws) is the arbiter that every counted law is a real law.
"""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torchvision
from torch import nn

import fxcons
from fxcons.models import REGISTRY

pytestmark = pytest.mark.slow

ZERO = {"gl": 0, "attention_qk": 0, "attention_vo": 0}


def _annotate_torchvision(name: str, size: int, batch: int = 2):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    x = torch.randn(batch, 3, size, size)
    return model, fxcons.annotate(model, example_inputs=(x,))


def _assert_verified(ann, probes: int = 1) -> None:
    rep = ann.verify(probes=probes)
    assert rep.checked == ann.total_laws
    assert rep.ok, [f.name for f in rep.families if not f.passed][:5]
    assert rep.failed == 0
    assert rep.max_ratio_exact < 1e-10          # exact laws: float64 round-off only
    assert rep.max_ratio < 1e-4                  # eps laws: eps lowered to 1e-12
    if rep.invariance is not None:               # random group element of every family
        assert rep.invariance < 1e-6


# ----------------------------------------------------------------------------- ResNet-50
#
# torchvision resnet50: stem conv1 (7x7, 64) + bn1 + ReLU + max-pool; Bottleneck stages
# [3, 4, 6, 3] with widths w = 64, 128, 256, 512 and expansion 4; a Bottleneck is
# conv1 1x1 (→w) bn1 ReLU conv2 3x3 (w→w) bn2 ReLU conv3 1x1 (w→4w) bn3, the first block of
# every stage has a downsample conv 1x1 (→4w) + BN. Every conv is bias-free and followed by a
# training-mode BN.
#
# scale (§3.4): one law per output channel of every conv (its BN forgets the channel's scale):
#   stem 64; a block has w + w + 4w = 6w channels, a downsample 4w:
#   stage1 3·384 + 256 = 1408; stage2 4·768 + 512 = 3584; stage3 6·1536 + 1024 = 10240;
#   stage4 3·3072 + 2048 = 11264; total 64 + 1408 + 3584 + 10240 + 11264 = 26560.
# rescale (§3.1, §3.6):
#   block-internal bn1 → conv2 and bn2 → conv3, 2w per block:
#     3·128 + 4·256 + 6·512 + 3·1024 = 384 + 1024 + 3072 + 3072 = 7552;
#   stem bn1 → ReLU → max-pool → layer1.0.conv1 and layer1.0.downsample (64 ≠ 256, so the stem
#     is not part of a residual stream): 64;
#   one law per channel of each residual stream (writers: downsample BN and every bn3 of the
#     stage; readers: the next blocks' conv1, the next stage's conv1 and downsample, or fc):
#     256 + 512 + 1024 + 2048 = 3840;
#   total 7552 + 64 + 3840 = 11456.
# translation: none (no conv bias, no head). gl / attention: none.
RESNET50 = {"scale": 26560, "rescale": 11456, "translation": 0, **ZERO}


def test_resnet50_counts_and_oracle():
    _, ann = _annotate_torchvision("resnet50", 64)
    assert ann.counts() == RESNET50
    assert ann.total_laws == 38016
    _assert_verified(ann)


# ----------------------------------------------------------------------------- VGG-11-BN
#
# torchvision vgg11_bn: cfg "A" = 64 M 128 M 256 256 M 512 512 M 512 512 M, every conv 3x3 with
# bias, then BN and ReLU; AdaptiveAvgPool2d(7, 7); classifier Linear(512·49, 4096) ReLU Dropout
# Linear(4096, 4096) ReLU Dropout Linear(4096, 1000).
# Conv channels: 64 + 128 + 256 + 256 + 512 + 512 + 512 + 512 = 2752.
# scale (§3.4): one per conv channel: 2752.
# translation (§3.5): every conv bias entry feeds a training-mode BN (zero gradient): 2752.
# rescale (§3.1): BN γ/β of conv k against the input columns of conv k+1 (7 pairs):
#   64 + 128 + 256 + 256 + 512 + 512 + 512 = 2240; the last BN (512 channels) through ReLU,
#   max-pool, adaptive average pool and flatten against the 49-column blocks of fc1: 512;
#   fc1 units → fc2 (4096) and fc2 units → fc3 (4096) through ReLU and dropout (a 0/1 mask);
#   total 2240 + 512 + 8192 = 10944.
# gl: none (ReLU/dropout between the Linear layers reduce GL to its diagonal, §3.2).
VGG11_BN = {"scale": 2752, "translation": 2752, "rescale": 10944, **ZERO}


def test_vgg11_bn_counts_and_oracle():
    _, ann = _annotate_torchvision("vgg11_bn", 32)
    assert ann.counts() == VGG11_BN
    assert ann.total_laws == 16448
    _assert_verified(ann)


# ----------------------------------------------------------------------------- CIFAR ResNet-18
#
# fxcons.models.resnet18_cifar (w = 64): see its module docstring.
# scale: stem 64, layer1 4·64, layer2 4·128 + 128, layer3 4·256 + 256, layer4 4·512 + 512
#   = 75·64 = 4800.
# rescale: block-internal bn1 → conv2: 2·(64 + 128 + 256 + 512) = 1920; streams
#   64 + 128 + 256 + 512 = 960 (stage 1's stream includes the stem BN: no max-pool, same width);
#   total 2880.
# classification head adds fc's 512 column sums and its bias sum: 513 translation laws.
def test_resnet18_cifar_counts_and_oracle():
    model, x = REGISTRY["resnet18_cifar"]()
    assert model(*x).shape == (2, 10)
    ann = fxcons.annotate(model, example_inputs=x)
    assert ann.counts() == {"scale": 4800, "rescale": 2880, "translation": 0, **ZERO}
    assert ann.total_laws == 7680
    _assert_verified(ann)
    head = fxcons.annotate(model, example_inputs=x, head="classification")
    assert head.counts() == {"scale": 4800, "rescale": 2880, "translation": 513, **ZERO}


# ----------------------------------------------------------------------------- DenseNet-121
#
# Concatenation (§3.6): every channel of a dense block's feature tensor is read by the norm1 BN
# of every later layer and by the transition's / the final BN, so a channel's producers have a
# scale law even though the tensor is concatenated. Blocks (6, 12, 24, 16), growth 32, bottleneck
# 128; inputs to the blocks 64, 128, 256, 512; transitions halve the channels.
# scale: conv0 64; norm0's γ/β (through ReLU and max-pool, read only by BNs) 64; each of the 58
#   dense layers: conv1 128 + conv2 32; transition convs 128 + 256 + 512:
#   64 + 64 + 58·160 + 896 = 10304.
# rescale: norm1 γ/β → conv1 columns, Σ over layers of their input width
#   (6·64 + 32·15) + (12·128 + 32·66) + (24·256 + 32·276) + (16·512 + 32·120)
#   = 864 + 3648 + 14976 + 12032 = 31520; norm2 → conv2: 58·128 = 7424; transition norms
#   256 + 512 + 1024 = 1792; norm5 → ReLU → pool → classifier: 1024; total 41760.
DENSENET121 = {"scale": 10304, "rescale": 41760, "translation": 0, **ZERO}


def test_densenet121_counts_and_oracle():
    _, ann = _annotate_torchvision("densenet121", 64)
    assert ann.counts() == DENSENET121
    _assert_verified(ann)


# ----------------------------------------------------------------------------- MobileNet-V2
#
# Every conv is bias-free + BN; all activations are ReLU6, which clips (§3.7): no rescaling law
# may cross one. scale: one law per conv channel:
#   stem 32; block t=1: dw 32 + proj 16; t=6 blocks (expand h = 6·in, dw h, proj out):
#   24-stage 216 + 312, 32-stage 320 + 2·416, 64-stage 448 + 3·832, 96-stage 864 + 2·1248,
#   160-stage 1312 + 2·2080, 320-stage 2240; last conv 1280: total 17056.
# rescale: only the linear bottlenecks (projection BN, no activation) against the next 1x1 conv
#   (and, through the residual adds, every projection BN of the stage): one law per stream
#   channel, 16 + 24 + 32 + 64 + 96 + 160 + 320 = 712.
# translation: every projection BN's bias β shifts a stream channel by a constant; the stream is
#   read only by 1x1 convs without padding (a constant per output channel) followed by a
#   training-mode BN, which removes it. So each projection-BN bias entry has zero gradient
#   (§3.5, BN subtracts the per-channel mean): 16 + 2·24 + 3·32 + 4·64 + 3·96 + 3·160 + 320
#   = 1504 laws (test_mobilenet_v2_projection_bias_has_zero_gradient checks them directly).
#   They need the conv rule to know that an unpadded 1x1 conv keeps a tangent constant over
#   the positions (a padded conv does not: its border differs).
MOBILENET_V2 = {"scale": 17056, "rescale": 712, "translation": 1504, **ZERO}
MOBILENET_V2_TRANSLATION = 1504


def _projection_biases(model: nn.Module) -> list[str]:
    """The bias of the BN that ends every inverted-residual block (no activation after it)."""
    names = []
    for i, block in enumerate(model.features[1:18], start=1):
        names.append(f"features.{i}.conv.{len(block.conv) - 1}.bias")
    return names


def _relu6_producers(model: nn.Module) -> tuple[set[str], set[str]]:
    """Module paths of every ReLU6 and of the parameters of the modules that feed one."""
    gm = fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    relu6, feeding = set(), set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], nn.ReLU6):
            relu6.add(node.target)
            src = node.args[0]
            assert src.op == "call_module", src
            feeding |= {f"{src.target}.{n}" for n, _ in mods[src.target].named_parameters()}
    return relu6, feeding


def test_mobilenet_v2_relu6_stops_rescaling():
    model, ann = _annotate_torchvision("mobilenet_v2", 64)
    counts = ann.counts()
    assert {k: counts[k] for k in MOBILENET_V2} == MOBILENET_V2
    proj = set(_projection_biases(model))
    assert set().union(*(f.params for f in ann.families if f.kind == "translation")) == proj
    assert counts["translation"] == MOBILENET_V2_TRANSLATION
    relu6, feeding = _relu6_producers(model)
    assert len(relu6) == 35 and len(feeding) == 70       # 35 BNs feed a ReLU6
    rescale = [f for f in ann.families if f.kind == "rescale"]
    assert rescale
    for f in rescale:
        assert not feeding & set(f.params), f.name     # no γ/β before a ReLU6 is rescaled
    # every ReLU6 is reported as a breaker (node path and reason)
    assert relu6 <= {b.where for b in ann.breakers}
    assert all("ReLU6" in b.why for b in ann.breakers if b.where in relu6)
    _assert_verified(ann)


def test_mobilenet_v2_projection_bias_has_zero_gradient():
    """The 1504 translation laws of the derivation above, checked directly in float64."""
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v2", weights=None).double().train()
    proj = _projection_biases(model)
    assert sum(dict(model.named_parameters())[n].numel() for n in proj) == MOBILENET_V2_TRANSLATION
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    out = model(x)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), [params[n] for n in proj]
                                + [params[n.replace("bias", "weight")] for n in proj])
    bias_g, weight_g = grads[:len(proj)], grads[len(proj):]
    for n, gb, gw in zip(proj, bias_g, weight_g):
        assert gb.abs().max() < 1e-9 * gw.abs().max(), n   # β: zero gradient; γ: not


# ----------------------------------------------------------------------------- SqueezeNet 1.0
#
# No BN, every conv with bias and ReLU. rescale: stem conv 96 units against fire2's squeeze
# columns; every fire module's squeeze units (s) against both expand convs' columns and its
# expand units (2e, concatenated) against the next squeeze conv / the final conv:
#   96 + 2·(16+128) + 2·(32+256) + 2·(48+384) + 2·(64+512) = 96 + 2880 = 2976.
# The final conv's units reach the output through ReLU and the average pool: no law.
SQUEEZENET1_0 = {"scale": 0, "rescale": 2976, "translation": 0, **ZERO}


def test_squeezenet1_0_counts_and_oracle():
    _, ann = _annotate_torchvision("squeezenet1_0", 64)
    assert ann.counts() == SQUEEZENET1_0
    _assert_verified(ann, probes=2)


# ----------------------------------------------------------------------------- the audit tool

def _load_tool(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fxcons_tool_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_audit_zoo_rows_and_report(tmp_path):
    audit = _load_tool("audit_zoo")
    assert len(audit.zoo_specs("torchvision", None, None)) == 80
    assert audit.zoo_specs("timm", 3, None) == ["timm:resnet18", "timm:vit_tiny_patch16_224", "timm:convnext_atto"]
    # squeezenet1_1: as 1.0 with a 64-channel stem: 64 + 2·(16+128) + 2·(32+256) + 2·(48+384) + 2·(64+512)
    row = audit.audit_one("torchvision:squeezenet1_1", "torchvision", 64, 2, True, 1, 10**9)
    assert row["status"] == "ok" and row["captured"] and row["frontend"] == "fx"
    assert row["input"] == "2x3x64x64"
    assert row["counts"] == {"rescale": 2944, "gl": 0, "scale": 0, "translation": 0, "attention_qk": 0,
                             "attention_vo": 0}
    assert row["verify"]["checked"] == 2944 and row["verify"]["failed"] == 0
    bad = audit.audit_one("torchvision:no_such_net", "torchvision", 64, 2, True, 1, 10**9)
    assert bad["status"] == "refused" and "no_such_net" in bad["reason"] and not bad["captured"]
    meta = {"zoo": "torchvision", "command": "test", "date": "-", "torch": "-", "python": "-", "threads": 1,
            "probes": 1}
    summ = audit.write_outputs(tmp_path, "t", meta, [row, bad])
    assert summ["annotated"] == 1 and summ["total_laws"] == 2944 and summ["laws_failed"] == 0
    md = (tmp_path / "t.md").read_text()
    assert "| `squeezenet1_1` | ok | fx | 2x3x64x64 |" in md and "**refused**" in md
