"""Translation (linear) laws, LAWS.md §3.5: θ → θ + t·c leaves the model unchanged.

A candidate direction c on a parameter slice makes a first-order *tangent* δ at the output of
the layer that uses it. The tangent is tracked abstractly as the set F of axes along which it
is constant (a bias entry: constant over every axis but the feature axis; W + 1uᵀ: constant
along the output-feature axis, i.e. a multiple of the ones vector). Rules say how an op maps F
(reshape/permute/add carry it, a Linear makes it vary along its output axis, anything
non-linear breaks it) and which ops *absorb* it:

* BatchNorm (training) absorbs a tangent constant over batch and spatial axes,
* LayerNorm / GroupNorm absorb a tangent constant over the normalized axes,
* softmax / log-softmax absorb one constant along their axis, and so does the model output
  when the user declares a classification head.

A candidate whose tangent is absorbed on every path is a law ⟨c, θ⟩. Candidates tried per
parameter: per entry (a bias, a BatchNorm β), then the sum direction; for weights the column
sums (W + 1uᵀ), for embeddings and raw tensors the sums over the last axis (one per row).
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx

from fxcons.capture import leaves
from fxcons.lawset import LawFamily, Term
from fxcons.ops import ParamRef
from fxcons.scale import rule_failure

class _Broken:
    def __repr__(self) -> str:
        return "BROKEN"


BROKEN = _Broken()  # a tangent no rule can absorb any more


def _shape(node):
    if isinstance(node, ParamRef):  # a parameter used as a tensor carries its own shape
        return tuple(node.shape) if node.shape is not None else None
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(v.shape) if hasattr(v, "shape") else None


def _ndim(node) -> int:
    shape = _shape(node)
    return len(shape) if shape is not None else 0


def _with_unit_axes(F: frozenset, shape) -> frozenset:
    return F | {i for i, s in enumerate(shape or ()) if s == 1}


# ----------------------------------------------------------------------------- rules
# each rule: (node, view, tangents: list[F | None per operand]) -> F | BROKEN | "absorbed"

ABSORBED = "absorbed"


def _carry(node, v, T):
    F = T[0]
    return F


def _broken(node, v, T):
    return BROKEN


def _linear_t(node, v, T):
    if T[0] is None:
        return None
    nd = _ndim(node)
    return T[0] - {nd - 1}


def _conv_batched(node, v) -> bool:
    wshape = _shape(v.ins[1])
    return wshape is not None and _ndim(node) == len(wshape)


def _conv_t(node, v, T):
    """out[o, p] = Σ_{i,k} W[o, i, k] δ[i, s·p + d·k]: the kernel mixes channels, so no tangent
    stays constant along them; a tangent constant over the positions stays so unless zero
    padding makes the border differ; the batch axis is carried."""
    F = T[0]
    if F is None:
        return None
    nd, wshape = _ndim(node), _shape(v.ins[1])
    if wshape is None:
        return BROKEN
    spatial = set(range(nd - (len(wshape) - 2), nd))
    keep = ({0} if _conv_batched(node, v) else set()) | (set() if v.attrs.get("padded", True) else spatial)
    return F & frozenset(keep)


def _batch_norm_t(node, v, T):
    F = T[0]
    nd = _ndim(node)
    if v.attrs.get("training") and F is not None:
        need = {a for a in range(nd) if a != (1 if nd > 1 else 0)}
        if need <= F:
            return ABSORBED
    return BROKEN if F is not None else None


def _layer_norm_t(node, v, T):
    F = T[0]
    nd = _ndim(node)
    if F is None:
        return None
    need = set(range(nd - int(v.attrs["ndim"]), nd))
    return ABSORBED if need <= F else BROKEN


def _group_norm_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    return ABSORBED if set(range(1, _ndim(node))) <= F else BROKEN


def _softmax_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    return ABSORBED if (v.attrs["dim"] % _ndim(node)) in F else BROKEN


def _permute_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    perm = v.attrs["perm"]
    return frozenset(i for i, p in enumerate(perm) if p in F)


def _reshape_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    from .rescale import _reshape_groups

    ins, outs = _shape(v.ins[0]), _shape(node)
    groups = _reshape_groups(tuple(ins), tuple(outs))
    if groups is None:
        return frozenset()
    out = set()
    for gi, go in groups:
        if all(a in F or ins[a] == 1 for a in gi):
            out.update(go)
    return frozenset(out)


def _expand_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    ins, outs = _shape(v.ins[0]), _shape(node)
    off = len(outs) - len(ins)
    return frozenset(set(range(off)) | {a + off for a in F} | {a + off for a, s in enumerate(ins) if s == 1})


def _index_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    idx = v.attrs["index"]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, list)) or hasattr(i, "shape") for i in idx):
        return BROKEN
    nin = _ndim(v.ins[0])
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    full = []
    for i in idx:
        full += [slice(None)] * (nin - n_real) if i is Ellipsis else [i]
    full += [slice(None)] * (nin - sum(1 for i in full if i is not None))
    out, a, o = set(), 0, 0
    for i in full:
        if i is None:
            out.add(o); o += 1
        elif isinstance(i, int):
            a += 1
        else:
            if a in F:
                out.add(o)
            a += 1; o += 1
    return frozenset(out)


def _split_t(node, v, T):
    F = T[0]
    outs = node.meta.get("val")
    if F is None:
        return tuple(None for _ in outs)
    if v.attrs.get("squeeze"):
        d = v.attrs["dim"]
        F2 = frozenset(a - (a > d) for a in F if a != d)
        return tuple(F2 for _ in outs)
    return tuple(F for _ in outs)


def _pick_t(node, v, T):
    F = T[0]
    if F is None or F is BROKEN:
        return F
    return F[v.attrs["i"]] if isinstance(F, tuple) else F


def _align(F, shape_in, shape_out):
    off = len(shape_out) - len(shape_in)
    return frozenset(set(range(off)) | {a + off for a in F})


def _add_t(node, v, T):
    live = [(x, F) for x, F in zip(v.ins, T) if F is not None]
    if not live:
        return None
    out = _shape(node)
    res = None
    for x, F in live:
        F = _align(F, _shape(x), out)
        res = F if res is None else res & F
    return _with_unit_axes(res, out)


def _mul_t(node, v, T):
    out = _shape(node)
    res = None
    for k, (x, F) in enumerate(zip(v.ins, T)):
        if F is None:
            continue
        other = v.ins[1 - k]
        F = _align(F, _shape(x), out)
        oshape = _shape(other)
        if oshape is None and isinstance(other, (fx.Node, ParamRef)):
            return BROKEN  # a tensor of unknown shape: nothing is known to stay constant
        if oshape is not None:  # multiplied by a tensor: constant only where it is
            const = {a + len(out) - len(oshape) for a, s in enumerate(oshape) if s == 1} | set(range(len(out) - len(oshape)))
            F = F & frozenset(const)
        res = F if res is None else res & F
    return res


def _div_t(node, v, T):
    if T[1] is not None:
        return BROKEN
    return _mul_t(node, v, [T[0], None])


def _reduce_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    if v.attrs["fn"] not in ("sum", "mean", "nansum", "nanmean"):
        return BROKEN
    dims = v.attrs["dims"]
    if v.attrs["keepdim"]:
        return F | frozenset(dims)
    keep = [a for a in range(_ndim(v.ins[0])) if a not in dims]
    return frozenset(i for i, a in enumerate(keep) if a in F)


def _pool_t(node, v, T):
    F = T[0]
    if F is None:
        return None
    nd = _ndim(node)
    k = int(v.attrs["k"])
    spatial = set(range(nd - k, nd))
    fn = v.attrs.get("fn", "").lower()
    if "max" in fn:
        # a max pool passes δ[argmax] on, and the argmax depends on every axis of the input: the
        # tangent stays constant along an axis only if it is also constant over the window
        return F if spatial <= F else frozenset()
    if "adaptive" in fn:
        return F
    return F - spatial


def _cat_t(node, v, T):
    live = [(x, F) for x, F in zip(v.ins, T) if F is not None]
    if not live:
        return None
    res = None
    for x, F in live:
        res = F if res is None else res & F
    return res - {v.attrs["dim"]}


def _stack_t(node, v, T):
    """A new axis at ``dim``: input axes at or after it move up by one; along the new axis the
    operands (some with no tangent) differ."""
    live = [F for F in T if F is not None]
    if not live:
        return None
    d = v.attrs["dim"]
    res = frozenset.intersection(*live)
    return frozenset(a + (a >= d) for a in res)


def _matmul_t(node, v, T):
    Fa, Fb = T[0], T[1]
    if Fa is None and Fb is None:
        return None
    if Fa is not None and Fb is not None:
        return BROKEN
    na, nb, no = _ndim(v.ins[0]), _ndim(v.ins[1]), _ndim(node)
    if na < 2 or nb < 2:
        return BROKEN
    # out[..., i, j] = Σ_k δa[..., i, k] b[..., k, j]: constant along a batch axis only where
    # the tangent is and the other operand does not vary (size 1 or absent there)
    sa, sb = _shape(v.ins[0]), _shape(v.ins[1])
    if sa is None or sb is None:
        return BROKEN

    def flat_in_other(out_axis, other, n_other):
        a = out_axis - (no - n_other)
        return a < 0 or other[a] == 1

    if Fa is not None:
        batch = {a + no - na for a in Fa if a < na - 2}
        row = {no - 2} if (na - 2) in Fa else set()
        keep = {a for a in batch | set(range(no - na)) if flat_in_other(a, sb, nb)}
        return frozenset(keep | row)
    batch = {a + no - nb for a in Fb if a < nb - 2}
    col = {no - 1} if (nb - 1) in Fb else set()
    keep = {a for a in batch | set(range(no - nb)) if flat_in_other(a, sa, na)}
    return frozenset(keep | col)


def _sdpa_t(node, v, T):
    Fq, Fk, Fv, Fm = (list(T) + [None] * 4)[:4]
    if Fq is not None or Fm is not None:
        return BROKEN
    nk = _ndim(v.ins[1])
    if Fk is not None and (nk - 2) not in Fk:
        return BROKEN
    if Fv is None:
        return None if Fk is None else None  # key tangent absorbed by the softmax over keys
    nv = _ndim(v.ins[2])
    if (nv - 2) not in Fv:
        return BROKEN
    return Fv  # softmax rows sum to one: P @ (1 ⊗ c) = 1 ⊗ c


def _dropout_t(node, v, T):
    return BROKEN if (v.attrs.get("active") and T[0] is not None) else T[0]


def _no_tangent(node, v, T):
    """Shapes and dims (``x.dim()``, ``x.shape[0]``, ``ones_like(x)``): their value does not move
    with the tangent. A comparison of a moving tensor (``x > 0``) has zero derivative, but a
    finite shift θ + t·c flips it: the model is then not invariant, so the candidate breaks."""
    if any(t is not None for t in T) and _is_comparison(node):
        return BROKEN
    return None


def _is_comparison(node) -> bool:
    from fxcons.ops import _fn_name

    name = node.target if isinstance(node.target, str) else _fn_name(node.target)
    return str(name).strip("_") in COMPARISONS


#: comparisons and logical ops (``meta`` kind: no derivative; their result flips under a shift)
COMPARISONS = {"eq", "ne", "lt", "gt", "le", "ge", "and", "or", "not", "logical_not", "logical_and",
               "logical_or", "logical_xor", "greater", "less", "greater_equal", "less_equal", "not_equal",
               "isclose", "isnan", "isinf", "isfinite", "sign", "signbit"}


def _first_operand(rule):
    """A rule that follows the tangent of the first operand only: one arriving through another
    operand (a computed weight, bias, γ or β) breaks the candidate."""
    def wrapped(node, v, T):
        if any(t is not None for t in T[1:]):
            return BROKEN
        return rule(node, v, T)

    wrapped.__name__ = rule.__name__
    return wrapped


RULES = {
    "identity": _carry, "linear": _linear_t, "conv": _conv_t, "batch_norm": _batch_norm_t,
    "layer_norm": _layer_norm_t, "group_norm": _group_norm_t, "softmax": _softmax_t,
    "permute": _permute_t, "reshape": _reshape_t, "expand": _expand_t, "index": _index_t,
    "split": _split_t, "pick": _pick_t, "reduce": _reduce_t, "pool": _pool_t, "dropout": _dropout_t,
}
RULES = {kind: _first_operand(rule) for kind, rule in RULES.items()}
RULES.update({"meta": _no_tangent, "add": _add_t, "mul": _mul_t, "div": _div_t, "cat": _cat_t, "stack": _stack_t,
              "matmul": _matmul_t, "sdpa": _sdpa_t})


# ----------------------------------------------------------------------------- propagation

def propagate(cap, starts: dict[fx.Node, frozenset], head: str | None) -> bool:
    """True if the tangents injected at ``starts`` are absorbed on every path."""
    nodes, pos = cap.node_order
    T: dict[fx.Node, object] = dict(starts)
    first = min(pos[n] for n in starts)
    for node in nodes[first:]:
        v = node.meta["fxc"]
        if v.kind == "output":  # operands are nested in a tuple/dict: check every leaf
            for o in leaves(v.ins[0]):
                F = T.get(o) if isinstance(o, fx.Node) else None
                if F is None:
                    continue
                if head == "classification" and not isinstance(F, tuple) and (_ndim(o) - 1) in F:
                    continue
                return False
            continue
        ins_t = [T.get(x) if isinstance(x, fx.Node) else None for x in v.ins]
        if all(t is None for t in ins_t):
            continue  # (a site's own tangent is already in T)
        rule = RULES.get(v.kind)
        if rule is None:
            return False
        try:
            res = rule(node, v, ins_t)
        except Exception as e:
            rule_failure(v.kind, e)
            return False
        if res is BROKEN:
            return False
        if res is ABSORBED or res is None:
            continue
        if not isinstance(res, tuple):
            res = _with_unit_axes(res, _shape(node))
        if node in starts:
            # a later use of the same parameter: its own tangent adds to the one flowing in
            # (L(L(x)) with a shifted bias), so only the axes where both are constant remain
            if isinstance(res, tuple):
                return False
            res = res & starts[node]
        T[node] = res
    return True




# ----------------------------------------------------------------------------- candidates

def _sites(cap):
    """param name -> list of (node, operand position, view)."""
    out: dict[str, list] = {}
    for node in cap.gm.graph.nodes:
        v = node.meta["fxc"]
        if v.kind == "param":  # the parameter's own placeholder / get_attr node is not a use
            continue
        for i, x in enumerate(v.ins):
            if isinstance(x, ParamRef):
                out.setdefault(x.name, []).append((node, i, v))
    return out


def _start_tangent(node, v, pos: int, direction: str):
    """F at the output of the site for a direction on the parameter at operand ``pos``.

    directions: 'entry' (one entry of a vector), 'total' (all ones), 'ones_out' (W + 1uᵀ,
    one u entry: a multiple of the ones vector along the output features), 'row' (one row of a
    table/raw tensor shifted by a multiple of ones along the last axis).
    """
    kind = v.kind
    if kind == "mha":
        return _mha_start(node, pos, direction)
    nd = _ndim(node)
    if nd == 0:
        return BROKEN
    if kind in ("linear", "conv", "batch_norm", "layer_norm", "group_norm", "rms_norm"):
        if kind == "conv":
            feat = 1 if _conv_batched(node, v) else 0
        else:
            feat = nd - 1 if kind in ("linear", "layer_norm", "rms_norm") else (1 if nd > 1 else 0)
        if kind in ("layer_norm", "rms_norm") and pos == 1 or kind in ("batch_norm", "group_norm") and pos == 1:
            return BROKEN  # γ multiplies the normalized input: its shift is not constant
        if kind == "rms_norm":
            return BROKEN
        is_weight = kind in ("linear", "conv") and pos == 1
        if not is_weight:  # a bias / β: constant over everything but (for 'entry') the feature axis
            if direction == "entry":
                if kind == "layer_norm" and int(v.attrs["ndim"]) > 1:
                    return BROKEN
                return frozenset(a for a in range(nd) if a != feat)
            if direction == "total":
                return frozenset(range(nd))
            return BROKEN
        if direction in ("ones_out", "total"):
            if kind == "conv" and v.attrs.get("groups", 1) != 1:
                return BROKEN
            return frozenset({feat})
        return BROKEN
    if kind == "embedding" and pos == 1:
        if direction in ("row", "total"):
            return frozenset({nd - 1}) if direction == "row" else frozenset(range(nd))
        return BROKEN
    if kind in ("add",):  # a raw parameter added to a tensor
        if direction == "row":
            return frozenset({nd - 1})
        if direction == "total":
            return frozenset(range(nd))
    if kind in RAW_SITES and direction in ("row", "total"):
        # a raw parameter moved by a shape op first (a class token expanded over the batch and
        # concatenated to the patches): its own tangent, carried through that op's rule
        pshape = _shape(v.ins[pos])
        if pshape is None or not pshape:
            return BROKEN
        own = frozenset({len(pshape) - 1}) if direction == "row" else frozenset(range(len(pshape)))
        T = [None] * len(v.ins)
        T[pos] = _with_unit_axes(own, pshape)
        F = RULES[kind](node, v, T)
        return F if isinstance(F, frozenset) else BROKEN
    return BROKEN


#: shape ops a raw parameter can be used by directly and still have row / total candidates
RAW_SITES = ("expand", "reshape", "permute", "index", "cat", "stack", "identity")


def _mha_start(node, pos: int, direction: str):
    """nn.MultiheadAttention's output projection (operands 5 and 6: out_proj.weight and .bias)
    writes the attention output (B, T, E) like a Linear: W + 1uᵀ shifts every token along the
    ones vector, a bias entry shifts one feature everywhere. The attention weights (the tuple's
    second output) do not depend on it. Other operands: no rule."""
    val = node.meta.get("val")
    out = val[0] if isinstance(val, (tuple, list)) and val else None
    if pos not in (5, 6) or not hasattr(out, "shape") or out.dim() == 0:
        return BROKEN
    nd = out.dim()
    if pos == 5:
        F = frozenset({nd - 1}) if direction in ("ones_out", "total") else BROKEN
    elif direction == "entry":
        F = frozenset(range(nd - 1))
    else:
        F = frozenset(range(nd)) if direction == "total" else BROKEN
    if F is BROKEN:
        return BROKEN
    return (_with_unit_axes(F, tuple(out.shape)), None)


def _is_weight(v, pos: int) -> bool:
    """The operand is a weight matrix read like a Linear's (its column sums are candidates)."""
    return v.kind in ("linear", "conv") and pos == 1 or v.kind == "mha" and pos == 5


# reducer (law) for each (site kind, direction)
def _law_reducer(kind: str, direction: str, layout: str, ndim: int) -> str:
    if direction == "total":
        return "total"
    if direction == "entry":
        return "entry"
    if direction == "ones_out":
        return "sum1" if layout == "in_out" else "sum0"
    return "sumlast"


def translation_pass(cap, head, fams):
    sites = _sites(cap)
    new: list[LawFamily] = []
    for name, uses in sites.items():
        info = cap.params.get(name)
        if info is None or not info.trainable:
            continue
        single = len(uses) == 1
        node0, pos0, v0 = uses[0]
        is_weight = _is_weight(v0, pos0)
        is_vector = len(info.shape) == 1
        if single and is_vector and not is_weight:
            plan = ["entry", "total"]
        elif single and is_weight:
            plan = ["ones_out"]
        elif single and (v0.kind in ("embedding", "add") or v0.kind in RAW_SITES):
            plan = ["row", "total"]
        else:
            plan = ["total"]
        for direction in plan:
            starts = {}
            ok = True
            for node, pos, v in uses:
                F = _start_tangent(node, v, pos, direction)
                if F is BROKEN:
                    ok = False
                    break
                if isinstance(F, tuple):  # a tuple-valued site (nn.MultiheadAttention)
                    if node in starts:
                        ok = False
                        break
                    starts[node] = F
                    continue
                F = _with_unit_axes(F, _shape(node))
                starts[node] = starts[node] & F if node in starts else F
            if not ok or not propagate(cap, starts, head):
                continue
            layout = v0.attrs.get("layout", "out_in")
            red = _law_reducer(v0.kind, direction, layout, len(info.shape))
            size = _reduced_size(info.shape, red)
            idx = np.arange(size, dtype=np.int64)[:, None]
            if red == "entry" and len(info.shape) != 1:
                continue
            new.append(LawFamily(f"{name.rsplit('.', 1)[0]}.{name.rsplit('.', 1)[-1]}", "translation", "exact",
                                 "linear", [Term(name, red, 1.0, idx)], where=name.rsplit(".", 1)[0],
                                 note=f"θ + t·c with c = {direction} direction is absorbed downstream"))
            break
    new += shift_transfer_laws(cap, sites)
    return _drop_conserved_squares(fams, new) + new, []


# ----------------------------------------------------------------------------- shift transfer

def _shift_source(cap, sites, node, pos: int, v):
    """(parameter, feature axis counted from the end, index (d, k) of the entries shifted per
    feature, factor a) when θ + t·c on that parameter adds exactly a·c (along the feature axis)
    to every position of ``node``'s output: a Linear / conv bias, every row of an embedding
    table, a raw parameter added to a tensor. None otherwise."""
    ref = v.ins[pos]
    if not isinstance(ref, ParamRef) or len(sites.get(ref.name, ())) != 1:
        return None
    info = cap.params.get(ref.name)
    out = _shape(node)
    if info is None or not info.trainable or not out or not info.shape:
        return None
    shape, n = tuple(info.shape), int(np.prod(info.shape))
    if v.kind in ("linear", "conv") and pos == 2 and len(shape) == 1:
        feat = -1 if v.kind == "linear" else (1 if _conv_batched(node, v) else 0) - len(out)
        scale = v.attrs.get("bias_scale", 1)  # addmm(b, x, W, beta=2) adds 2b
        if not isinstance(scale, (int, float)) or scale == 0:
            return None
        return ref.name, feat, np.arange(n, dtype=np.int64)[:, None], float(scale)
    last = shape[-1]
    flat = np.arange(n, dtype=np.int64).reshape(-1, last).T  # (d, rows): entry [row, i]
    if v.kind == "embedding" and pos == 1 and v.attrs.get("padding_idx") is None and len(shape) == 2:
        return ref.name, -1, flat, 1.0  # every row + c: every looked-up vector moves by c
    if v.kind == "add" and pos in (0, 1) and out[-1] == last and len(shape) <= len(out):
        return ref.name, -1, flat, 1.0  # broadcast over every other axis of the sum
    return None


def _add_root(cap, node, coef: float):
    """Follow ``node`` up through sums it is the only input of; (root add, coefficient of
    ``node`` in the root's value). A node read by anything else ends the climb."""
    while len(node.users) == 1:
        (user,) = node.users
        u = user.meta["fxc"]
        if u.kind != "add" or _shape(user) is None:
            break
        hits = [i for i, x in enumerate(u.ins) if x is node]
        if len(hits) != 1:
            break
        coef *= 1.0 if hits[0] == 0 else float(u.attrs.get("alpha", 1))
        node = user
    return node, coef


def shift_transfer_laws(cap, sites) -> list[LawFamily]:
    """Several parameters that add a shift c to the same sum, each at every position: moving c
    from one to another leaves the sum, hence the model, unchanged (a token embedding and a
    position embedding: tok + 1cᵀ, pos − 1cᵀ). Per pair (first source, other source) and
    feature i, the law Σ_k first[k, i] / a_first − Σ_k other[k, i] / a_other, with a the
    source's coefficient in the sum (LAWS.md §3.5's translation, one direction spread over
    several parameters)."""
    groups: dict = {}
    for name, uses in sites.items():
        if len(uses) != 1:
            continue
        node, pos, v = uses[0]
        src = _shift_source(cap, sites, node, pos, v)
        if src is None:
            continue
        pname, feat, idx, scale = src
        if v.kind == "add":  # the parameter is itself an operand of the sum
            coef = 1.0 if pos == 0 else float(v.attrs.get("alpha", 1))
            root, coef = _add_root(cap, node, coef)
        else:
            if len(node.users) != 1:
                continue
            root, coef = _add_root(cap, node, scale)
            if root is node:
                continue
        if coef == 0:
            continue
        groups.setdefault(root, []).append(((pname, feat, idx), coef))
    fams = []
    for root, srcs in groups.items():
        by_axis: dict = {}
        for (pname, feat, idx), coef in srcs:
            by_axis.setdefault((feat, idx.shape[0]), []).append((pname, idx, coef))
        for (feat, d), members in by_axis.items():
            if (_shape(root) or (0,))[feat] != d:
                continue
            (p0, i0, a0), rest = members[0], members[1:]
            for p1, i1, a1 in rest:
                fams.append(LawFamily(
                    f"{p0}↔{p1} shift", "translation", "exact", "linear",
                    [Term(p0, "entry", 1.0 / a0, i0), Term(p1, "entry", -1.0 / a1, i1)],
                    where=p0.rsplit(".", 1)[0],
                    note=f"θ + t·c: {p0} adds c to the sum {root.name}, {p1} takes it back"))
    return fams


def _drop_conserved_squares(fams: list[LawFamily], linear: list[LawFamily]) -> list[LawFamily]:
    """A bias whose every entry is a linear law (BatchNorm in front) is conserved itself: its
    squares are dropped from quadratic laws, giving the simpler equivalent set of LAWS.md
    (e.g. ‖conv.W[c]‖² alone rather than ‖conv.W[c]‖² + b_c²)."""
    conserved = {f.terms[0].param for f in linear
                 if len(f.terms) == 1 and f.terms[0].reducer == "entry" and f.terms[0].index.shape[1] == 1}
    out = []
    for f in fams:
        if f.form == "diag" and any(t.param in conserved and t.reducer == "sq" for t in f.terms):
            terms = [t for t in f.terms if not (t.param in conserved and t.reducer == "sq")]
            if not terms:
                continue
            f.terms = terms
        out.append(f)
    return out


def _reduced_size(shape, red: str) -> int:
    n = int(np.prod(shape))
    if red in ("entry",):
        return n
    if red == "sum0":
        return n // shape[0]
    if red == "sum1":
        return n // shape[1]
    if red == "sumlast":
        return n // shape[-1]
    return 1
