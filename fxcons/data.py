"""Small data sets that need no download, shaped for a given model (``fxcons train --data``).

* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), standardised and
  resized with ``F.interpolate`` to the model's input size (channels repeated, e.g. 3x32x32 for a
  CIFAR ResNet); vector models get the flattened image (resized to a square of their width).
* ``text``: a character corpus that ships with every Python: the source of the standard
  library's ``argparse`` and ``textwrap`` modules (the Zen of Python if no source is installed).
  Token models get windows of ``seq_len`` characters (ids by frequency, the rarest characters
  sharing the last id); a (B, K) output predicts the next character (id mod K), a (B, L, K)
  output every next character.
* ``synthetic``: Gaussian inputs (random ids for token models) labelled by a fixed random
  teacher, so that training makes progress.

Every data set lives on the training device; batches are drawn there (no host copies per step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import FxconsError

DATASETS = ("digits", "text", "synthetic")


class DataError(FxconsError):
    """A data set cannot be shaped for the model."""


@dataclass
class Dataset:
    name: str
    inputs: torch.Tensor   # (N, *input shape)
    targets: torch.Tensor  # (N,) or (N, L), int64
    num_classes: int
    note: str = ""

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.inputs.to(device), self.targets.to(device), self.num_classes, self.note)

    def batches(self, batch_size: int, seed: int = 0):
        """Endless shuffled minibatches (epochs without replacement), drawn on the data's device."""
        n = len(self)
        bs = min(batch_size, n)
        dev = self.inputs.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
        while True:
            perm = torch.randperm(n, device=dev, generator=gen)
            for i in range(0, n - bs + 1, bs):
                idx = perm[i:i + bs]
                yield self.inputs[idx], self.targets[idx]


def make_dataset(name: str, example_input: torch.Tensor, output_shape: tuple[int, ...], vocab: int | None = None,
                 seed: int = 0, size: int = 4096) -> Dataset:
    """A data set for a model with this example input and output shape (batch axis first)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if len(output_shape) not in (2, 3):
        raise DataError(f"cross-entropy training needs (batch, classes) or (batch, seq, classes) outputs, "
                        f"the model returns {tuple(output_shape)}")
    K = int(output_shape[-1])
    is_tokens = not example_input.is_floating_point()
    if name == "digits":
        if is_tokens:
            raise DataError("digits are images; this model takes token ids (use --data text or synthetic)")
        if len(output_shape) != 2:
            raise DataError("digits need a (batch, classes) output")
        return _digits(example_input, K)
    if name == "text":
        if not is_tokens or example_input.dim() != 2:
            raise DataError("text gives (batch, seq_len) token ids; this model takes "
                            f"{tuple(example_input.shape)} {example_input.dtype} inputs")
        return _text(example_input.shape[1], vocab or K, output_shape, seed, size)
    return _synthetic(example_input, output_shape, vocab, seed, size)


# ----------------------------------------------------------------------------- digits

def _digits(example: torch.Tensor, K: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("--data digits needs scikit-learn: pip install 'fxcons[train]'") from None
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)  # (N, 8, 8), values 0..16
    x = (x - x.mean()) / x.std()
    y = torch.as_tensor(d.target, dtype=torch.int64) % K
    shape = tuple(example.shape[1:])
    if len(shape) == 3:  # (C, H, W)
        C, H, W = shape
        x = F.interpolate(x[:, None], size=(H, W), mode="bilinear", align_corners=False).expand(-1, C, -1, -1)
    elif len(shape) == 1:  # (D,)
        D = shape[0]
        s = math.isqrt(D)
        if s * s == D:
            x = F.interpolate(x[:, None], size=(s, s), mode="bilinear", align_corners=False).reshape(len(x), D)
        else:
            x = F.interpolate(x.reshape(len(x), 1, 64), size=D, mode="linear", align_corners=False)[:, 0]
    else:
        raise DataError(f"digits need (batch, C, H, W) or (batch, D) inputs, not {tuple(example.shape)}")
    note = f"sklearn digits 8x8 -> {'x'.join(map(str, shape))}, {len(x)} images, {min(K, 10)} classes"
    return Dataset("digits", x.contiguous().to(example.dtype), y, K, note)


# ----------------------------------------------------------------------------- text

def corpus() -> str:
    """Text shipped with Python: argparse's and textwrap's source (the Zen of Python otherwise)."""
    import argparse
    import textwrap

    parts = []
    for mod in (argparse, textwrap):
        try:
            with open(mod.__file__, encoding="utf-8") as f:
                parts.append(f.read())
        except (OSError, TypeError):
            pass
    if not parts:
        import codecs
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            import this
        parts.append(codecs.decode(this.s, "rot13"))
    return "\n".join(parts)


def encode(text: str, vocab: int) -> torch.Tensor:
    """Character ids by frequency; characters beyond the ``vocab - 1`` most frequent share the last id."""
    from collections import Counter

    ranked = [c for c, _ in Counter(text).most_common()]
    ids = {c: min(i, vocab - 1) for i, c in enumerate(ranked)}
    return torch.tensor([ids[c] for c in text], dtype=torch.int64)


def _text(L: int, vocab: int, output_shape, seed: int, size: int) -> Dataset:
    ids = encode(corpus(), vocab)
    K = int(output_shape[-1])
    n = min(size, len(ids) - L - 1)
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, len(ids) - L - 1, (n,), generator=g)
    win = ids[start[:, None] + torch.arange(L + 1)]
    x = win[:, :L]
    y = (win[:, 1:] if len(output_shape) == 3 else win[:, L]) % K
    return Dataset("text", x, y, K, f"{len(ids)} characters of stdlib source, vocab {vocab}, windows of {L}")


# ----------------------------------------------------------------------------- synthetic

def _synthetic(example: torch.Tensor, output_shape, vocab, seed: int, size: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    K = int(output_shape[-1])
    shape = tuple(example.shape[1:])
    if example.is_floating_point():
        x = torch.randn((size, *shape), generator=g)
        flat = x.reshape(size, -1)
        teacher = torch.randn(flat.shape[1], K, generator=g)
        logits = flat @ teacher
        if len(output_shape) == 3:
            raise DataError("synthetic data for float inputs needs a (batch, classes) output")
        y = logits.argmax(1)
        x = x.to(example.dtype)
    else:
        V = vocab or int(example.max()) + 1
        x = torch.randint(0, V, (size, *shape), generator=g)
        if len(output_shape) == 3:
            y = (x + 1) % K
        else:
            w = torch.randn(V, generator=g)
            y = (w[x].reshape(size, -1).cumsum(1)[:, -1] * 3).floor().long() % K
    return Dataset("synthetic", x, y, K, f"{size} random samples, teacher labels, {K} classes")
