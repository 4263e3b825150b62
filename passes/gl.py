"""Linear bottlenecks, GL(r) (LAWS.md §3.2).

y = U(Vx + b) + c with nothing between V and U but ops that are linear along *other* axes
(identity, inactive dropout, reshapes/permutes that keep the feature axis, sums/means over
other axes, average pooling over spatial axes): (V, b) → (GV, Gb), U → UG⁻¹ for any invertible
G. Laws: the r×r symmetric matrix

    H = V Vᵀ + b bᵀ − Σ_U UᵀU      (r(r+1)/2 entries; its diagonal is the rescale law)

Independent count: k·r − k(k−1)/2 with k = min(r, m + 1 + n) (m: columns of [V b] minus the
bias, n: rows of the stacked consumers). A GL family replaces the rescale laws on its diagonal.
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx

from fxcons.derive import remove_subsumed
from fxcons.lawset import LawFamily, Term
from fxcons.ops import ParamRef
from fxcons.scale import rule_failure

TRANSPARENT = {"identity"}


def _shape(n):
    v = n.meta.get("val")
    return tuple(v.shape) if hasattr(v, "shape") else None


def _feature_axis(node) -> int:
    v = node.meta["fxc"]
    return -1 if v.kind == "linear" else _conv_channel_axis(node)


def _conv_channel_axis(node) -> int:
    """1 for a batched input, 0 for an unbatched one (the weight has the input's ndim)."""
    w = node.meta["fxc"].ins[1]
    wshape = w.shape if isinstance(w, ParamRef) else _shape(w)
    return 1 if wshape is not None and len(wshape) == len(_shape(node) or ()) else 0


def _consumers(start: fx.Node, axis: int):
    """Linear/conv nodes reading ``start``'s feature axis through GL-transparent ops only."""
    out, stack = [], [(start, axis)]
    while stack:
        node, ax = stack.pop()
        for user in node.users:
            v = user.meta["fxc"]
            nd = len(_shape(node) or ())
            if v.kind in ("identity",) or (v.kind == "dropout" and not v.attrs.get("active")):
                stack.append((user, ax))
            elif v.kind == "pool" and "avg" in v.attrs.get("fn", "").lower() and ax % nd < nd - int(v.attrs["k"]):
                stack.append((user, ax))  # averages over the trailing k axes, not the features
            elif v.kind == "reduce" and v.attrs["fn"] in ("sum", "mean") and (ax % nd) not in v.attrs["dims"]:
                if not v.attrs["keepdim"]:
                    kept = [a for a in range(nd) if a not in v.attrs["dims"]]
                    ax = kept.index(ax % nd)
                stack.append((user, ax))
            elif v.kind in ("linear", "conv") and v.ins[0] is node:
                if v.kind == "linear" and ax % nd != nd - 1:
                    return None
                if v.kind == "conv" and (ax % nd != _conv_channel_axis(user) or v.attrs.get("groups", 1) != 1):
                    return None
                if v.kind == "linear" and v.attrs.get("layout", "out_in") != "out_in":
                    return None
                out.append(user)
            else:
                return None
    return out


def gl_pass(cap, head, fams):
    sites = {n: len(s) for n, s in cap.sites.items()}
    new = []
    for node in cap.gm.graph.nodes:
        v = node.meta["fxc"]
        if v.kind not in ("linear", "conv") or (v.kind == "conv" and v.attrs.get("groups", 1) != 1):
            continue
        if v.kind == "linear" and v.attrs.get("layout", "out_in") != "out_in":
            continue
        w = v.ins[1]
        b = v.ins[2] if len(v.ins) > 2 else None
        if not isinstance(w, ParamRef) or (b is not None and not isinstance(b, ParamRef)):
            continue
        try:
            cons = _consumers(node, _feature_axis(node))
        except Exception as e:  # no rule for this neighbourhood: no GL law here
            rule_failure(v.kind, e)
            continue
        if not cons:
            continue
        params = [w] + ([b] if b is not None else []) + [c.meta["fxc"].ins[1] for c in cons]
        if any(not isinstance(p, ParamRef) or sites.get(p.name, 0) != 1 or not cap.params[p.name].trainable
               for p in params):
            continue
        if len({p.name for p in params}) != len(params):
            continue
        r = cap.params[w.name].shape[0]
        idx = np.arange(r, dtype=np.int64)[None, :]
        terms = [Term(w.name, "gram", 1.0, idx, axis=0)]
        if b is not None:
            terms.append(Term(b.name, "gram", 1.0, idx, axis=0))
        n = 0
        for c in cons:
            cw = c.meta["fxc"].ins[1].name
            terms.append(Term(cw, "gram", -1.0, idx, axis=1))
            shp = cap.params[cw].shape
            n += int(np.prod(shp)) // shp[1]
        m = int(np.prod(cap.params[w.name].shape)) // r + (1 if b is not None else 0)
        k = min(r, m + n)
        indep = k * r - k * (k - 1) // 2
        prod = w.name.rsplit(".", 1)[0]
        cons_names = ",".join(c.meta["fxc"].ins[1].name.rsplit(".", 1)[0] for c in cons)
        fam = LawFamily(f"{prod}→{cons_names}", "gl", "exact", "gram", terms, where=prod, independent=indep,
                        note=f"GL({r}) linear bottleneck: H = VVᵀ + bbᵀ − ΣUᵀU")
        new.append(fam)
    return remove_subsumed(fams, new) + new, []
