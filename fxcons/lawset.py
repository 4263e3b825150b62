"""LawSet: conservation laws as plain data, evaluated vectorised per family.

A :class:`LawFamily` is ``count`` scalar laws of one shape, e.g. one per hidden unit:

* ``form="diag"`` (quadratic, diagonal): ``h[u] = Σ_terms coef · Σ_k R_term[index[u, k]]``
  where ``R`` is a *reduction* of one parameter (squares summed per row, per column, per entry).
* ``form="linear"``: the same with linear reductions (entries, sums over an axis).
* ``form="gram"`` (matrix laws, LAWS.md §3.2–3.3): for each block ``u``,
  ``H[u] = Σ_terms coef · M_term[u] M_term[u]ᵀ`` with ``M = moveaxis(θ, axis, 0)[index[u]]``
  flattened; the laws are the upper-triangular entries of ``H[u]``.

Every family knows its exactness (``exact`` or ``eps``) and evaluates on any device/dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .errors import LawInputError

KINDS = ("rescale", "gl", "scale", "translation", "attention_qk", "attention_vo")


@dataclass
class Term:
    param: str
    reducer: str  # diag: sq0 sq1 sq ; linear: entry sum0 sum1 sumlast ; gram: gram
    coef: float
    index: np.ndarray  # (count, k) for diag/linear ; (blocks, r) for gram
    axis: int = 0
    groups: int = 1

    def to_dict(self) -> dict:
        return {"param": self.param, "reducer": self.reducer, "coef": self.coef, "axis": self.axis,
                "groups": self.groups, "index": self.index.tolist()}

    @staticmethod
    def from_dict(d: dict) -> "Term":
        return Term(d["param"], d["reducer"], float(d["coef"]), np.asarray(d["index"], dtype=np.int64),
                    int(d.get("axis", 0)), int(d.get("groups", 1)))


@dataclass
class LawFamily:
    name: str
    kind: str
    exactness: str
    form: str
    terms: list[Term]
    where: str = ""
    independent: int | None = None
    note: str = ""

    @property
    def blocks(self) -> int:
        return int(self.terms[0].index.shape[0])

    @property
    def count(self) -> int:
        """Number of scalar laws (matrix laws: upper-triangular entries per block)."""
        if self.form == "gram":
            r = self.terms[0].index.shape[1]
            return self.blocks * r * (r + 1) // 2
        return self.blocks

    @property
    def params(self) -> list[str]:
        return sorted({t.param for t in self.terms})

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "exactness": self.exactness, "form": self.form,
                "count": self.count, "independent": self.independent if self.independent is not None else self.count,
                "params": self.params, "where": self.where, "note": self.note,
                "terms": [t.to_dict() for t in self.terms]}

    @staticmethod
    def from_dict(d: dict) -> "LawFamily":
        return LawFamily(d["name"], d["kind"], d["exactness"], d["form"], [Term.from_dict(t) for t in d["terms"]],
                         d.get("where", ""), d.get("independent"), d.get("note", ""))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, params: Mapping[str, torch.Tensor], cache: dict | None = None) -> torch.Tensor:
        cache = {} if cache is None else cache
        if self.form == "gram":
            return _eval_gram(self, params)
        total = None
        for t in self.terms:
            red = reduce_param(params[t.param], t.reducer, t.groups, t.axis, cache, t.param)
            idx = _index_tensor(t, red.device, cache)
            val = red[idx].sum(-1) * t.coef
            total = val if total is None else total + val
        return total


def _index_tensor(t: Term, device, cache: dict) -> torch.Tensor:
    key = ("idx", id(t), device)
    if key not in cache:
        cache[key] = torch.as_tensor(t.index, device=device)
    return cache[key]


def reduce_param(p: torch.Tensor, reducer: str, groups: int, axis: int, cache: dict, name: str) -> torch.Tensor:
    key = (name, reducer, groups, axis)
    if key in cache:
        return cache[key]
    if reducer == "sq0":
        r = p.square().reshape(p.shape[0], -1).sum(1)
    elif reducer == "sq1":
        q = p.square()
        q = q.reshape(q.shape[0], q.shape[1], -1).sum(2)  # (out, ipg)
        r = q.reshape(groups, q.shape[0] // groups, q.shape[1]).sum(1).reshape(-1)
    elif reducer == "sq":
        r = p.square().reshape(-1)
    elif reducer == "entry":
        r = p.reshape(-1)
    elif reducer == "sum0":
        r = p.sum(0).reshape(-1)
    elif reducer == "sum1":
        r = p.sum(1).reshape(-1)
    elif reducer == "sumlast":
        r = p.sum(-1).reshape(-1)
    elif reducer == "total":
        r = p.sum().reshape(1)
    else:  # pragma: no cover
        raise ValueError(f"unknown reducer {reducer}")
    cache[key] = r
    return r


def _eval_gram(fam: LawFamily, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    H = None
    for t in fam.terms:
        p = params[t.param]
        M = torch.movedim(p, t.axis, 0)
        idx = torch.as_tensor(t.index, device=p.device)  # (blocks, r)
        M = M[idx].reshape(idx.shape[0], idx.shape[1], -1)  # (blocks, r, rest)
        G = M @ M.transpose(1, 2) * t.coef
        H = G if H is None else H + G
    r = H.shape[-1]
    iu = torch.triu_indices(r, r, device=H.device)
    return H[:, iu[0], iu[1]].reshape(-1)


@dataclass
class LawSet:
    families: list[LawFamily] = field(default_factory=list)
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(f.count for f in self.families)

    def by_kind(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for f in self.families:
            out[f.kind] = out.get(f.kind, 0) + f.count
        return out

    def params(self) -> list[str]:
        return sorted({p for f in self.families for p in f.params})

    def check_params(self, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Validate a parameter mapping: every needed name present, right shape, finite."""
        out = {}
        for name in self.params():
            if name not in params:
                raise LawInputError(f"parameter '{name}' is missing from the state dict")
            t = params[name]
            if not isinstance(t, torch.Tensor):
                raise LawInputError(f"parameter '{name}' is not a tensor ({type(t).__name__})")
            want = tuple(self.param_shapes.get(name, t.shape))
            if tuple(t.shape) != want:
                raise LawInputError(f"parameter '{name}' has shape {tuple(t.shape)}, expected {want}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise LawInputError(f"parameter '{name}' contains NaN or Inf")
            out[name] = t.detach()
        return out

    def evaluate(self, params: Mapping[str, torch.Tensor], check: bool = True) -> dict[str, torch.Tensor]:
        """Every law value, one tensor per family (keyed by family name)."""
        params = self.check_params(params) if check else params
        cache: dict = {}
        return {f.name: f.evaluate(params, cache) for f in self.families}

    def to_dict(self) -> dict:
        return {"families": [f.to_dict() for f in self.families],
                "param_shapes": {k: list(v) for k, v in self.param_shapes.items()}}

    @staticmethod
    def from_dict(d: dict) -> "LawSet":
        return LawSet([LawFamily.from_dict(f) for f in d["families"]],
                      {k: tuple(v) for k, v in d.get("param_shapes", {}).items()})
