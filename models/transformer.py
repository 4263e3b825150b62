"""A tiny pre-LN Transformer classifier (nn.MultiheadAttention, nn.Linear, nn.LayerNorm).

    ids (B, T) → tok(ids) + pos → L × [x += attn(ln1(x)); x += fc2(act(fc1(ln2(x))))]
      → ln_f → mean over T → head

Laws (training mode, dropout 0, ReLU MLP; LAWS.md §3), with d = dim, h = heads, dh = d / h,
f = ff, V = vocab, T = seq_len, L = layers (defaults d=32, h=4, f=64, V=16, T=8, L=2, C=5):

* ``attention_qk`` (§3.3): per layer and head, ``[Q_h bq_h][Q_h bq_h]ᵀ − [K_h bk_h][K_h bk_h]ᵀ``:
  ``L·h·dh(dh+1)/2`` (288).
* ``attention_vo``: ``[V_h bv_h][V_h bv_h]ᵀ − O_hᵀO_h``: ``L·h·dh(dh+1)/2`` (288).
* key bias (§3.3/§3.5): every entry of the key bias has zero gradient: ``L·d`` linear laws (64).
* ``rescale`` (§3.1): each MLP hidden unit, ``rsq(fc1.W)[j] + fc1.b[j]² − csq(fc2.W)[j]``
  (``L·f`` = 128); each LayerNorm's affine against the columns of the layer that reads it,
  ``γ_i² + β_i² − csq(reader.W)[i]`` (ln1 → in_proj, ln2 → fc1, ln_f → head through the
  mean over T): ``(2L + 1)·d`` (160). Total 288.
* ``scale`` (eps, §3.4): the residual stream is read only by LayerNorms, so scaling every
  writer (tok, pos, every out_proj and fc2, weights and biases) is one law: 1.
* ``translation`` (§3.5), LayerNorm subtracts the feature mean: for each stream writer alone,
  ``1ᵀW`` and the bias sum (out_proj: d + 1, fc2: f + 1 per layer), the row sums of ``tok``
  (V) and of ``pos`` (T): ``L·(d + f + 2) + V + T`` (220). With ``head="classification"``:
  + d + 1 (head column sums and bias sum) = 33.
* ``translation``, shift transfer: ``tok(ids) + pos`` is unchanged by tok + 1cᵀ, pos − 1cᵀ
  (every token gains c, every position loses it): per feature i, ``Σ_v tok[v, i] −
  Σ_t pos[t, i]``: d (32), one of them (c = 1) a combination of the row sums above.

With ``activation="gelu"`` the ``L·f`` MLP rescaling laws disappear (§3.7).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._common import seeded

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ff)
        self.fc2 = nn.Linear(ff, dim)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 16, seq_len: int = 8, dim: int = 32, heads: int = 4, ff: int = 64,
                 layers: int = 2, num_classes: int = 5, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, ff, activation, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x).mean(1))


def tiny_transformer(vocab: int = 16, seq_len: int = 8, dim: int = 32, heads: int = 4, ff: int = 64,
                     layers: int = 2, num_classes: int = 5, activation: str = "relu", dropout: float = 0.0,
                     batch: int = 4, seed: int = 0):
    """Pre-LN Transformer classifier and a (batch, seq_len) LongTensor of token ids.

    Laws with the defaults (module docstring): 288 attention_qk + 288 attention_vo, 64 key-bias
    linear laws, 288 rescale, 1 scale (eps), 220 + 32 translation (+33 with a classification head).
    """
    with seeded(seed):
        model = TinyTransformer(vocab, seq_len, dim, heads, ff, layers, num_classes, activation, dropout)
        return model, (torch.randint(0, vocab, (batch, seq_len)),)
