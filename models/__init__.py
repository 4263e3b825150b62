"""Reference models for tests and tools (installed as ``fxcons.models``).

Each factory returns ``(model, example_inputs)`` and documents the laws a correct fxcons finds
(hand-derived from LAWS.md). ``REGISTRY`` maps names to factories; the model spec
``models:NAME?opt=val`` builds one from the command line.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .cnn import small_cnn, small_cnn_bn
from .mlp import deep_linear_mlp, relu_mlp
from .resnet_cifar import resnet18_cifar
from .transformer import tiny_transformer

REGISTRY: dict[str, Callable[..., tuple[nn.Module, tuple]]] = {
    "resnet18_cifar": resnet18_cifar,
    "relu_mlp": relu_mlp,
    "deep_linear_mlp": deep_linear_mlp,
    "small_cnn": small_cnn,
    "small_cnn_bn": small_cnn_bn,
    "tiny_transformer": tiny_transformer,
}

__all__ = ["REGISTRY", *REGISTRY]
