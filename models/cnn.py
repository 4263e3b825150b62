"""Small convolutional reference models, with and without BatchNorm.

Counts are for training mode and no head unless stated (LAWS.md §3.1, §3.4, §3.5).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import seeded


def _check_size(size: int) -> None:
    if size < 2 or size % 2:
        raise ValueError(f"size must be an even number >= 2 (the net max-pools by 2), got {size}")


def small_cnn(channels=(8, 16), num_classes: int = 10, batch: int = 2, size: int = 8, seed: int = 0):
    """conv1 → ReLU → conv2 → ReLU → MaxPool2d(2) → flatten → fc (no BatchNorm).

    Convs are 3×3, padding 1, with bias; input (batch, 3, size, size).
    Laws (§3.1), ``rescale``, one per hidden channel: ``rsq(conv1.W)[c] + conv1.b[c]² −
    csq(conv2.W)[c]`` (channels[0]) and ``rsq(conv2.W)[c] + conv2.b[c]² − ‖fc.W[:, block c]‖²``
    where block c is the (size/2)² columns that flatten maps channel c to (channels[1]).
    Default: 8 + 16 = 24. With ``head="classification"``: fc's in_features + 1 ``translation``.
    """
    _check_size(size)
    c1, c2 = channels
    with seeded(seed):
        model = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (size // 2) ** 2, num_classes),
        )
        return model, (torch.randn(batch, 3, size, size),)


def small_cnn_bn(channels=(8, 16), num_classes: int = 10, conv_bias: bool = False, batch: int = 4,
                 size: int = 8, seed: int = 0):
    """conv1 → BN → ReLU → conv2 → BN → ReLU → MaxPool2d(2) → flatten → fc.

    Laws (training mode):
    * ``scale`` (eps, §3.4), one per channel of each conv: ``rsq(conv.W)[c]`` —
      channels[0] + channels[1] (24 by default);
    * ``rescale`` (§3.1): ``bn1.γ[c]² + bn1.β[c]² − csq(conv2.W)[c]`` (channels[0]) and
      ``bn2.γ[c]² + bn2.β[c]² − ‖fc.W[:, block c]‖²`` (channels[1]): 24 by default;
    * with ``conv_bias=True``: each conv bias entry has zero gradient (BN removes the batch
      mean): channels[0] + channels[1] ``translation`` laws (§3.5).
    In eval mode (``training=False``) BN is a fixed affine map of its input: the ``scale`` and
    ``translation`` laws disappear (and conv units do not rescale through it), but the 24
    ``rescale`` laws remain (BN's output γ ⊙ n + β scales with γ and β, n being fixed).
    """
    _check_size(size)
    c1, c2 = channels
    with seeded(seed):
        model = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (size // 2) ** 2, num_classes),
        )
        return model, (torch.randn(batch, 3, size, size),)
