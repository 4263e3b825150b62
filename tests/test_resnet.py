"""Acceptance of the core issue on torchvision ResNet-18 (training mode, no loss assumption).

Hand derivation (LAWS.md §3.1, §3.4, §3.6):
* BatchNorm scale laws (eps): one per BN channel = 64 (stem) + 4·64 (layer1) + (4·128 + 128 ds)
  + (4·256 + 256) + (4·512 + 512) = 64 + 256 + 640 + 1280 + 2560 = 4800.
* Inside each BasicBlock, bn1's affine (γ²+β²) rescales against conv2's input columns:
  2 blocks × (64 + 128 + 256 + 512) = 1920.
* One residual-stream law per channel of each stage's stream: 64 + 128 + 256 + 512 = 960.
Total 7680. Convolutions have no bias, and the classifier reaches the output: nothing else.
"""
import pytest
import torch
import torchvision

import fxcons


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return fxcons.annotate(torchvision.models.resnet18(), (torch.randn(2, 3, 64, 64),))


def test_resnet18_counts_family_by_family(r18):
    c = r18.counts()
    assert r18.total_laws == 7680
    assert c["scale"] == 4800 and c["rescale"] == 2880 and c["gl"] == c["translation"] == 0
    block = [f for f in r18.families if f.kind == "rescale" and len(f.params) == 3]
    stream = [f for f in r18.families if f.kind == "rescale" and len(f.params) > 3]
    assert sum(f.count for f in block) == 1920 and len(block) == 8
    assert sum(f.count for f in stream) == 960 and sorted(f.count for f in stream) == [64, 128, 256, 512]
    assert all(f.exactness == "eps" for f in r18.families if f.kind == "scale")


def test_resnet18_stage1_stream_couples_every_writer_and_reader(r18):
    f = next(f for f in r18.families if f.kind == "rescale" and f.count == 64 and len(f.params) > 3)
    writers = {t.param for t in f.terms if t.coef > 0}
    readers = {t.param for t in f.terms if t.coef < 0}
    assert writers == {"bn1.weight", "bn1.bias", "layer1.0.bn2.weight", "layer1.0.bn2.bias",
                       "layer1.1.bn2.weight", "layer1.1.bn2.bias"}
    assert readers == {"layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight",
                       "layer2.0.downsample.0.weight"}


def test_resnet18_oracle(r18):
    rep = r18.verify(probes=1)
    assert rep.checked == 7680 and rep.failed == 0
    assert rep.max_ratio_exact < 1e-10
    assert rep.invariance < 1e-8


def test_classification_head_adds_softmax_translation_laws():
    m = torchvision.models.resnet18(num_classes=10)
    ann = fxcons.annotate(m, (torch.randn(4, 3, 32, 32),), head="classification")
    # fc.weight column sums (512) and the bias sum (1)
    assert ann.counts()["translation"] == 513
    assert ann.verify(probes=1).ok


def test_evaluate_matches_direct_formula(r18):
    m = r18.model
    vals = r18.evaluate(m)
    f = next(f for f in r18.families if f.name.startswith("layer1.0.bn1"))
    W = m.layer1[0].conv2.weight.detach()
    bn = m.layer1[0].bn1
    direct = bn.weight.detach() ** 2 + bn.bias.detach() ** 2 - W.square().sum((0, 2, 3))
    assert torch.allclose(vals[f.name], direct, rtol=1e-6, atol=1e-6)
