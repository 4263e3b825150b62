"""The CIFAR-style ResNet-18 of the seed paper (3x3 stem, no max-pool, 32x32 inputs).

Laws (training mode, no head; LAWS.md §3.1, §3.4, §3.6), with ``w = width`` (64 by default):

* ``scale`` (eps, §3.4): every conv is followed by a training-mode BatchNorm, so each output
  channel of each conv gives ``rsq(conv.W)[c]``. Channels: stem ``w``; layer1 4 convs × w;
  layer2 4 × 2w + downsample 2w; layer3 4 × 4w + 4w; layer4 4 × 8w + 8w:
  ``w·(1 + 4 + 10 + 20 + 40) = 75·w`` (4800 for w = 64).
* ``rescale`` (exact, §3.1): inside every block, ``bn1.γ[c]² + bn1.β[c]² − csq(conv2.W)[c]``
  (through the ReLU): ``2·(w + 2w + 4w + 8w) = 30·w``; one residual-stream law per channel of
  each stage (§3.6: written by the stem / downsample BN and every block's ``bn2``, read by the
  next convs or the classifier through the average pool): ``w + 2w + 4w + 8w = 15·w``. Total
  ``45·w`` (2880 for w = 64).
* No translation laws without a head (the convs have no bias). With
  ``head="classification"``: the column sums of ``fc.weight`` (8w) and the sum of ``fc.bias``
  (§3.5): ``8·w + 1`` translation laws.

Total without head: ``120·w`` = 7680 for w = 64 (the same counts as torchvision's ResNet-18,
whose stem differs only in kernel size and the max-pool).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._common import seeded


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            stride = 1 if i == 0 else 2
            stage = []
            for k in range(n):
                stage.append(BasicBlock(cin, cout, stride if k == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet18_cifar(width: int = 64, num_classes: int = 10, batch: int = 2, size: int = 32,
                   seed: int = 0):
    """CIFAR ResNet-18 (BasicBlocks [2, 2, 2, 2], widths w-2w-4w-8w) and a (batch, 3, size, size) input.

    Laws: 75·w ``scale`` (eps) + 45·w ``rescale``; +8·w+1 ``translation`` with a
    classification head (module docstring).
    """
    with seeded(seed):
        model = ResNetCifar((2, 2, 2, 2), width, num_classes)
        return model, (torch.randn(batch, 3, size, size),)
