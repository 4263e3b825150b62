"""Model factories for CLI tests (spec path/to/file.py:Factory)."""
import torch
from torch import nn


def mlp():
    """ReLU MLP with a GELU branch at the end: laws for the ReLU unit, none through GELU."""
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    return m, (torch.randn(5, 3),)


def needs_shape():
    return nn.Sequential(nn.Linear(3, 2))


def frozen():
    m = nn.Linear(3, 2)
    for p in m.parameters():
        p.requires_grad_(False)
    return m, (torch.randn(2, 3),)
