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
        """Law values, shape (count,)."""
        if self.form == "gram":
            return _gram(self, lambda t: _blocks(t, params[t.param]), None)
        elem = (lambda p: p.square()) if self.form == "diag" else (lambda p: p)
        return _combine(self, lambda t: elem(params[t.param]), cache, "v")

    def directional(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
                    cache: dict | None = None) -> torch.Tensor:
        """<∇h(θ), g> for every law h of the family (exact), shape (count,).

        ``cache``: a dict shared by the calls of one (θ, g) pair (all families of one oracle
        probe), so a parameter's reductions and blocks are computed once."""
        if self.form == "gram":
            return _gram(self, lambda t: _blocks(t, params[t.param], cache, "θ"),
                         lambda t: _blocks(t, grads[t.param], cache, "g"))
        if self.form == "diag":
            return 2 * _combine(self, lambda t: params[t.param] * grads[t.param], cache, "dθg")
        return _combine(self, lambda t: grads[t.param], cache, "dg")

    def grad_norm(self, params: Mapping[str, torch.Tensor], cache: dict | None = None) -> torch.Tensor:
        """‖∇h(θ)‖ for every law (upper bound when the slices of two terms overlap)."""
        if self.form == "gram":
            D = _gram_diag(self, lambda t: _blocks(t, params[t.param], cache, "θ"), square_coef=True)
            r = D.shape[-1]
            iu = torch.triu_indices(r, r, device=D.device)
            a, b = iu[0], iu[1]
            n2 = torch.where(a == b, 4 * D[:, a], D[:, a] + D[:, b])
            return n2.reshape(-1).sqrt()
        if self.form == "diag":
            return (4 * _combine(self, lambda t: params[t.param].square(), cache, "nθθ", square_coef=True)).sqrt()
        return _combine(self, lambda t: torch.ones_like(params[t.param]), cache, "n1", square_coef=True).sqrt()

    def support_norm(self, grads: Mapping[str, torch.Tensor], cache: dict | None = None) -> torch.Tensor:
        """‖g restricted to the entries the law depends on‖, shape (count,)."""
        if self.form == "gram":
            D = _gram_diag(self, lambda t: _blocks(t, grads[t.param], cache, "g"), square_coef=None)
            r = D.shape[-1]
            iu = torch.triu_indices(r, r, device=D.device)
            return (D[:, iu[0]] + torch.where(iu[0] == iu[1], 0, 1) * D[:, iu[1]]).reshape(-1).sqrt()
        sq = _combine(self, lambda t: grads[t.param].square(), cache, "sgg", abs_coef=True,
                      reducer_map=_SQUARED_REDUCER)
        return sq.sqrt()


_SQUARED_REDUCER = {"sq0": "sq0", "sq1": "sq1", "sq": "sq", "entry": "sq", "sum0": "sum0", "sum1": "sum1",
                    "sumlast": "sumlast", "total": "total"}


def _combine(fam: LawFamily, X, cache, tag, square_coef=False, abs_coef=False, reducer_map=None) -> torch.Tensor:
    total = None
    for t in fam.terms:
        red = t.reducer if reducer_map is None else reducer_map[t.reducer]
        key = (tag, t.param, red, t.groups) if cache is not None else None
        if key is not None and key in cache:
            r = cache[key]
        else:
            r = reduce_tensor(X(t), red, t.groups)
            if key is not None:
                cache[key] = r
        idx = torch.as_tensor(t.index, device=r.device)
        c = t.coef * t.coef if square_coef else abs(t.coef) if abs_coef else t.coef
        val = r[idx].sum(-1) * c
        total = val if total is None else total + val
    return total


def reduce_tensor(p: torch.Tensor, reducer: str, groups: int = 1) -> torch.Tensor:
    """Reductions of an elementwise-mapped parameter ``p`` (θ², θ·g, θ ...), flattened."""
    if reducer == "sq0":
        return p.reshape(p.shape[0], -1).sum(1)
    if reducer == "sq1":
        q = p.reshape(p.shape[0], p.shape[1], -1).sum(2)  # (out, ipg)
        return q.reshape(groups, q.shape[0] // groups, q.shape[1]).sum(1).reshape(-1)
    if reducer in ("sq", "entry"):
        return p.reshape(-1)
    if reducer == "sum0":
        return p.sum(0).reshape(-1)
    if reducer == "sum1":
        return p.sum(1).reshape(-1)
    if reducer == "sumlast":
        return p.sum(-1).reshape(-1)
    if reducer == "total":
        return p.sum().reshape(1)
    raise ValueError(f"unknown reducer {reducer}")


def _blocks(t: Term, p: torch.Tensor, cache: dict | None = None, tag: str = "") -> torch.Tensor:
    """(blocks, r, rest): the rows of θ (moved to ``t.axis``) selected by the term's index."""
    key = (tag, t.param, t.axis, id(t.index)) if cache is not None else None
    if key is not None and key in cache:
        return cache[key]
    M = torch.movedim(p, t.axis, 0)
    idx = torch.as_tensor(t.index, device=p.device)
    out = M[idx].reshape(idx.shape[0], idx.shape[1], -1)
    if key is not None:
        cache[key] = out
    return out


def _gram(fam: LawFamily, M_of, G_of) -> torch.Tensor:
    H = None
    for t in fam.terms:
        M = M_of(t)
        # directional: Σ c (G Mᵀ + M Gᵀ) = S + Sᵀ with S = Σ c G Mᵀ (half the products)
        G = (M if G_of is None else G_of(t)) @ M.transpose(1, 2)
        G = G * t.coef
        H = G if H is None else H + G
    if G_of is not None:
        H = H + H.transpose(1, 2)
    r = H.shape[-1]
    iu = torch.triu_indices(r, r, device=H.device)
    return H[:, iu[0], iu[1]].reshape(-1)


def _gram_diag(fam: LawFamily, M_of, square_coef) -> torch.Tensor:
    D = None
    for t in fam.terms:
        d = M_of(t).square().sum(-1)
        c = t.coef * t.coef if square_coef else 1.0
        D = d * c if D is None else D + d * c
    return D


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
