"""Fully connected reference models: a ReLU MLP and a deep linear network.

Counts are for training mode and no head unless stated (LAWS.md §3.1, §3.2, §3.5).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import seeded


def relu_mlp(dims=(8, 16, 16, 16, 3), batch: int = 16, seed: int = 0):
    """Linear → ReLU → ... → Linear (biases everywhere) and a (batch, dims[0]) input.

    Laws: one ``rescale`` law per hidden unit j of layer k (§3.1),
    ``rsq(fc{k}.W)[j] + fc{k}.b[j]² − csq(fc{k+1}.W)[j]``: ``sum(dims[1:-1])`` laws (48 by
    default). The ReLU reduces the GL(r) of a linear bottleneck to its diagonal (§3.2).
    With ``head="classification"``: ``dims[-2] + 1`` ``translation`` laws, the column sums of
    the last weight and the sum of its bias (§3.5).
    """
    layers: list[nn.Module] = []
    with seeded(seed):
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if k < len(dims) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers), (torch.randn(batch, dims[0]),)


def deep_linear_mlp(dims=(8, 4, 4, 3), bias: bool = True, batch: int = 16, seed: int = 0):
    """Linear layers with no activation between them, and a (batch, dims[0]) input.

    Laws (§3.2): every hidden layer of width r between V = fc{k} (r × m, bias b) and
    U = fc{k+1}.W (n × r) is a GL(r) bottleneck with the r×r symmetric law
    ``H = V Vᵀ + b bᵀ − UᵀU``: ``r(r+1)/2`` ``gl`` laws per hidden layer, all independent when
    r ≤ n + m (+1 with a bias). Default dims (8, 4, 4, 3): 10 + 10 = 20 ``gl`` laws (r = 4 ≤
    4 + 8 + 1 and 4 ≤ 3 + 4 + 1); their diagonals are the 8 ``rescale`` laws of §3.1, which a
    GL pass subsumes. With ``head="classification"``: ``dims[-2] + 1`` ``translation`` laws.
    """
    with seeded(seed):
        layers = [nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:])]
        return nn.Sequential(*layers), (torch.randn(batch, dims[0]),)
