"""The diagonal (log-scale) engine: every positive-rescaling symmetry at once.

Each tensor of the graph carries an array of unknown ids (same ndim as the tensor, size 1 on
axes where its scale does not vary): "this coordinate is multiplied by exp(t·x_id)". Each
parameter carries per-axis unknowns so that entry ``[j, i, ...]`` of a weight is scaled
by ``exp(t·(u_out[j] − u_in[i]))`` (per entry for vectors and raw tensors). Rules (see
``fxcons.passes.rescale``) add linear equations; the kernel of the system is the space of all
diagonal symmetries, and each kernel vector ``w`` gives the conservation law

    h(θ) = Σ_p w_p ‖θ_p‖²      (θ_p: the parameter slice an unknown scales)

Data inputs, buffers and model outputs have scale 0. Normalizations forget their input's scale
(those unknowns are marked ``eps``: the law is exact only as the normalization's eps -> 0).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .capture import Captured, leaves
from .linsys import LinearSystem
from .ops import ParamRef

Ids = np.ndarray | None  # None: scale identically zero


@dataclass
class ParamVars:
    """Unknowns of one parameter. ``role`` is 'matrix' (per-axis) or 'tensor' (per-entry)."""

    name: str
    role: str
    shape: tuple[int, ...]
    axes: dict = field(default_factory=dict)  # axis -> ids (axis 1 may be (groups, ipg))
    entries: np.ndarray | None = None
    groups: int = 1
    sites: int = 0
    out_axis: int = 0


@dataclass
class Breaker:
    """A node that stopped a symmetry, and why."""

    node: str
    where: str
    why: str
    family: str = "rescale"


def rule_failure(kind: str, e: BaseException) -> str:
    """The breaker reason for a rule that raised (sound: the node stops every symmetry), with a
    warning, since it is a gap in the rule (please report it)."""
    why = f"the {kind!r} rule cannot read this node ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    warnings.warn(f"fxcons: {why}; the symmetries through it are treated as broken", stacklevel=3)
    return why


class ScaleAnalysis:
    def __init__(self, cap: Captured) -> None:
        self.cap = cap
        self.sys = LinearSystem()
        self.params: dict[str, ParamVars] = {}
        self.env: dict[fx.Node, Any] = {}
        self.breakers: list[Breaker] = []
        self._bad_params: set[str] = set()

    # ------------------------------------------------------------------ values
    def val(self, x: Any) -> Ids:
        if isinstance(x, fx.Node):
            return self.env.get(x)
        if isinstance(x, ParamRef):
            return self.raw_param(x.name)
        return None

    @staticmethod
    def shape(x: Any) -> tuple[int, ...] | None:
        v = x.meta.get("val") if isinstance(x, fx.Node) else x
        if isinstance(v, torch.Tensor):
            return tuple(int(s) for s in v.shape)
        return v.shape if isinstance(v, ParamRef) else None  # a parameter used as a tensor

    def out_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        return self.shape(node)

    def broken(self, node: fx.Node, why: str, *values: Ids) -> None:
        """Force ``values`` to scale 0 and record the node if it actually stopped something."""
        # a list-valued operand (``[t] * n`` traced by fx) holds several id arrays
        live = [v for v in leaves(values) if isinstance(v, np.ndarray) and v.dtype.kind in "iu"]
        for v in live:
            self.sys.zero(v)
        if live:
            self.breakers.append(Breaker(node.name, node.meta["fxc"].where, why))

    # ------------------------------------------------------------------ parameters
    def _trainable(self, name: str) -> bool:
        return self.cap.params[name].trainable if name in self.cap.params else False

    def matrix(self, name: str, groups: int = 1) -> ParamVars | None:
        """Per-axis unknowns of a weight (axis 0: rows; axis 1: (groups, in/groups) columns)."""
        pv = self.params.get(name)
        shape = self.cap.params[name].shape
        if pv is None:
            pv = ParamVars(name, "matrix", shape, groups=groups)
            pv.axes[0] = self.sys.new((shape[0],))
            pv.axes[1] = self.sys.new((groups, shape[1]) if groups > 1 else (shape[1],))
            if not self._trainable(name):
                self.sys.zero(pv.axes[0])
                self.sys.zero(pv.axes[1])
            self.params[name] = pv
        elif pv.role != "matrix" or pv.groups != groups:
            self._incompatible(name)
            return None
        return pv

    def vector(self, ref: Any) -> Ids:
        """Per-entry unknowns of a bias / norm affine parameter (None if absent)."""
        if not isinstance(ref, ParamRef):
            return None if ref is None else self.val(ref)
        return self.raw_param(ref.name)

    def raw_param(self, name: str) -> Ids:
        pv = self.params.get(name)
        shape = self.cap.params[name].shape
        if pv is None:
            pv = ParamVars(name, "tensor", shape, entries=self.sys.new(shape))
            if not self._trainable(name):
                self.sys.zero(pv.entries)
            self.params[name] = pv
        elif pv.role != "tensor":
            self._incompatible(name)
            return None
        return pv.entries

    def _incompatible(self, name: str) -> None:
        if name in self._bad_params:
            return
        self._bad_params.add(name)
        pv = self.params[name]
        for ids in pv.axes.values():
            self.sys.zero(ids)
        if pv.entries is not None:
            self.sys.zero(pv.entries)
        self.breakers.append(Breaker(name, name, "parameter used both as a weight matrix and elementwise"))

    def matrix_site(self, name: str, s: Ids, t: np.ndarray, out_axis: int, groups: int = 1) -> None:
        """A weight used as y_j = Σ_i W_ji x_i: input scales ``s`` (in,), output ``t`` (out,).

        rate(W[j, i]) = u_out[j] − u_in[i] must equal t_j − s_i. With a per-site offset κ per
        group: t_j = u_out[j] + κ_g and s_i = u_in[i] + κ_g (κ = 0 at the first site fixes the
        gauge u_out + δ, u_in + δ). Both are plain equalities at a first site, so the common
        case never reaches the general solver. Column unknowns enter laws with a minus sign.
        """
        pv = self.matrix(name, groups if out_axis == 0 else 1)
        if pv is None:
            self.sys.zero(t)
            if s is not None:
                self.sys.zero(s)
            return
        if pv.sites == 0:
            pv.out_axis = out_axis  # rate(W) = u[out_axis] − u[in_axis], fixed at the first site
        flip = -1 if out_axis != pv.out_axis else 1  # a tied use with the other orientation
        in_axis = 1 - out_axis
        u_out = pv.axes[out_axis]
        u_in = pv.axes[in_axis]
        if pv.sites == 0:
            kappa = np.zeros((groups,), dtype=np.int64)
        else:
            kappa = self.sys.new((groups,))
        pv.sites += 1
        out = u_out.shape[0]
        g_of_j = np.arange(out) // (out // groups)
        self.sys.lin([(1, t), (-flip, u_out), (-1, kappa[g_of_j])])
        s = np.zeros(u_in.size, dtype=np.int64) if s is None else s.reshape(-1)
        u_in_flat = u_in.reshape(groups, -1)
        ipg = u_in_flat.shape[1]
        g_of_i = np.arange(groups * ipg) // ipg
        self.sys.lin([(1, s), (-1, kappa[g_of_i]), (-flip, u_in_flat.reshape(-1))])

    # ------------------------------------------------------------------ helpers for rules
    def collapse(self, ids: Ids, axes: list[int], keep: bool = True) -> Ids:
        """Require ``ids`` to be constant along ``axes``; return it with those axes of size 1."""
        if ids is None:
            return None
        for a in axes:
            if ids.shape[a] > 1:
                first = np.take(ids, [0], axis=a)
                self.sys.eq(ids, first)
                ids = first
        if not keep:
            ids = np.squeeze(ids, axis=tuple(axes)) if axes else ids
        return ids

    def feature_vector(self, ids: Ids, axis: int, size: int) -> np.ndarray | None:
        """Scale of each coordinate along ``axis`` (constant over the other axes), shape (size,)."""
        if ids is None:
            return None
        others = [a for a in range(ids.ndim) if a != axis % ids.ndim]
        ids = self.collapse(ids, others)
        v = ids.reshape(-1)
        return np.broadcast_to(v, (size,)).copy() if v.size == 1 else v

    @staticmethod
    def at_axis(vec: np.ndarray, axis: int, ndim: int) -> np.ndarray:
        shape = [1] * ndim
        shape[axis % ndim] = vec.size
        return vec.reshape(shape)

    # ------------------------------------------------------------------ run
    def run(self, rules: dict) -> None:
        for node in self.cap.gm.graph.nodes:
            view = node.meta["fxc"]
            rule = rules.get(view.kind)
            if rule is None:
                ins = [self.val(x) for x in view.ins if isinstance(x, (fx.Node, ParamRef))]
                self.broken(node, view.attrs.get("why", f"no rescale rule for op kind {view.kind!r}"), *ins)
                self.env[node] = None
                continue
            try:
                out = rule(self, node, view)
            except Exception as e:  # a rule that cannot read this node stops its symmetries
                ins = [self.val(x) for x in view.ins if isinstance(x, (fx.Node, ParamRef))]
                self.broken(node, rule_failure(view.kind, e), *[i for i in ins if isinstance(i, np.ndarray)])
                out = None
            val = node.meta.get("val")
            if isinstance(val, (tuple, list)) and not isinstance(out, tuple):
                out = (out,) + (None,) * (len(val) - 1)  # e.g. max_pool2d_with_indices
            self.env[node] = out
