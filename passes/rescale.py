"""Rules of the diagonal (log-scale) family: neuron rescaling, normalization scale, residual
coupling, gating, tied parameters (LAWS.md §3.1, §3.4, §3.6).

Each rule takes the engine ``A`` (:class:`fxcons.scale.ScaleAnalysis`), the node and its
canonical view, and returns the id array of the node's output (None: scale 0). A kind with no
rule here breaks every rescaling that reaches it.
"""
from __future__ import annotations

import numpy as np
import torch

from fxcons.capture import leaves
from fxcons.ops import ParamRef
from fxcons.scale import ScaleAnalysis


def _no_scale(A, node, v):
    return None


def _passthrough(A, node, v):
    ids = A.val(v.ins[0])
    return _fit(ids, A.out_shape(node))


def _homog(A, node, v):
    """ReLU / LeakyReLU / PReLU: positively homogeneous in the input; a PReLU slope operand is
    read as is (it cannot scale)."""
    for slope in v.ins[1:]:
        ids = A.val(slope)
        if ids is not None:
            A.sys.zero(ids)
    return _passthrough(A, node, v)


def _fit(ids, shape):
    """Broadcast-compatible ids for an output of ``shape`` (prepend / squeeze leading 1-axes)."""
    if ids is None or shape is None:
        return ids
    while ids.ndim < len(shape):
        ids = ids[None]
    while ids.ndim > len(shape) and ids.shape[0] == 1:
        ids = ids[0]
    return ids


def _breaker(A, node, v):
    A.broken(node, v.attrs.get("why", v.kind), *[A.val(x) for x in v.ins])
    return None


# ----------------------------------------------------------------------------- layers

def _linear(A: ScaleAnalysis, node, v):
    x, w, b = (v.ins + [None] * 3)[:3]
    shape = A.out_shape(node)
    out = shape[-1]
    xin = A.val(x)
    in_shape = A.shape(x)
    s = A.feature_vector(xin, -1, in_shape[-1]) if xin is not None else None
    t = A.sys.new((out,))
    out_axis = 0 if v.attrs.get("layout", "out_in") == "out_in" else 1
    if not isinstance(w, ParamRef):
        A.broken(node, "linear weight is computed, not a parameter", s, t, A.val(w), A.val(b))
        return None
    A.matrix_site(w.name, s, t, out_axis)
    bias = A.vector(b)
    if bias is not None:
        A.sys.eq(bias.reshape(-1), t)
    elif b is not None:  # a non-parameter bias tensor: the unit cannot scale
        A.sys.zero(t)
    return A.at_axis(t, -1, len(shape))


def _conv(A: ScaleAnalysis, node, v):
    x, w, b = (v.ins + [None] * 3)[:3]
    shape = A.out_shape(node)
    if not isinstance(w, ParamRef):
        A.broken(node, "conv weight is computed, not a parameter", A.val(x), A.val(w), A.val(b))
        return None
    batched = len(shape) == len(A.cap.params[w.name].shape)
    cax = 1 if batched else 0
    groups = int(v.attrs.get("groups", 1))
    xin = A.val(x)
    s = A.feature_vector(xin, cax, A.shape(x)[cax]) if xin is not None else None
    t = A.sys.new((shape[cax],))
    A.matrix_site(w.name, s, t, 0, groups)
    bias = A.vector(b)
    if bias is not None:
        A.sys.eq(bias, t)
    return A.at_axis(t, cax, len(shape))


def _embedding(A: ScaleAnalysis, node, v):
    """A lookup scales like its table's columns. With ``padding_idx`` the lookup gets no
    gradient for that row (a frozen copy at this site): the looked-up rows cannot all scale."""
    idx, w = v.ins[:2]
    shape = A.out_shape(node)
    t = A.sys.new((shape[-1],))
    A.matrix_site(w.name, None, t, 1)
    if v.attrs.get("padding_idx") is not None:
        A.broken(node, "embedding padding_idx: the padding row gets no gradient from the lookup", t)
    return A.at_axis(t, -1, len(shape))


def _affine(A: ScaleAnalysis, node, v, weight, bias, axis: int, size: int, ndim: int):
    """Output scale of ``γ ⊙ normalized + β`` (normalized has scale 0)."""
    g, b = A.vector(weight), A.vector(bias)
    if g is None and b is None:
        return None
    t = A.sys.new((size,))
    for p in (g, b):
        if p is not None:
            A.sys.eq(p.reshape(-1), t)
    return A.at_axis(t, axis, ndim)


def _batch_norm(A: ScaleAnalysis, node, v):
    x, g, b = (v.ins + [None] * 3)[:3]
    shape = A.out_shape(node)
    cax = 1 if len(shape) > 1 else 0
    xin = A.val(x)
    if v.attrs["training"]:
        s = A.feature_vector(xin, cax, shape[cax])  # per-channel scale is forgotten
        if s is not None:
            A.sys.mark_eps(s)
    elif xin is not None:
        A.broken(node, "BatchNorm in eval mode is a fixed affine map", xin)
    return _affine(A, node, v, g, b, cax, shape[cax], len(shape))


def _layer_norm(A: ScaleAnalysis, node, v):
    x, g, b = (v.ins + [None] * 3)[:3]
    shape = A.out_shape(node)
    k = int(v.attrs["ndim"])
    xin = A.val(x)
    if xin is not None:
        s = A.collapse(xin, list(range(xin.ndim - k, xin.ndim)))
        A.sys.mark_eps(s)
    norm = shape[-k:]
    size = int(np.prod(norm))
    gv, bv = A.vector(g), A.vector(b)
    if gv is None and bv is None:
        return None
    t = A.sys.new(tuple(norm))
    for p in (gv, bv):
        if p is not None:
            A.sys.eq(p, t)
    return t.reshape((1,) * (len(shape) - k) + tuple(norm)) if size else None


def _group_norm(A: ScaleAnalysis, node, v):
    x, g, b = (v.ins + [None] * 3)[:3]
    shape = A.out_shape(node)
    C = shape[1]
    G = int(v.attrs["groups"])
    xin = A.val(x)
    s = A.feature_vector(xin, 1, C)
    if s is not None:
        per = s.reshape(G, C // G)
        A.sys.eq(per, per[:, :1])
        A.sys.mark_eps(per[:, 0])
    return _affine(A, node, v, g, b, 1, C, len(shape))


# ----------------------------------------------------------------------------- shape ops

def _reshape(A: ScaleAnalysis, node, v):
    ids = A.val(v.ins[0])
    if ids is None:
        return None
    return reshape_ids(A, ids, A.shape(v.ins[0]), A.out_shape(node))


def reshape_ids(A: ScaleAnalysis, ids: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """Reshape an id array, keeping broadcast axes broadcast where the reshape allows it."""
    groups = _reshape_groups(tuple(in_shape), tuple(out_shape))
    if groups is None:
        full = np.broadcast_to(ids, in_shape)
        return np.ascontiguousarray(full).reshape(out_shape)
    pieces_shape: list[int] = []
    # expand only the groups that carry a non-broadcast axis
    expand_shape = list(ids.shape)
    for ins, outs in groups:
        if any(ids.shape[a] > 1 for a in ins):
            for a in ins:
                expand_shape[a] = in_shape[a]
            pieces_shape += [out_shape[o] for o in outs]
        else:
            pieces_shape += [1] * len(outs)
    full = np.broadcast_to(ids, expand_shape)
    return np.ascontiguousarray(full).reshape(pieces_shape)


def _reshape_groups(ins, outs):
    """Pair contiguous groups of input and output axes with equal products."""
    groups = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        gi, gj = [], []
        pi = pj = 1
        if i < len(ins):
            gi.append(i); pi *= ins[i]; i += 1
        if j < len(outs):
            gj.append(j); pj *= outs[j]; j += 1
        while pi != pj:
            if pi < pj and i < len(ins):
                gi.append(i); pi *= ins[i]; i += 1
            elif pj < pi and j < len(outs):
                gj.append(j); pj *= outs[j]; j += 1
            else:
                return None
        # absorb trailing size-1 axes into the current group
        while j < len(outs) and outs[j] == 1 and (i >= len(ins) or ins[i] != 1):
            gj.append(j); j += 1
        while i < len(ins) and ins[i] == 1 and (j >= len(outs) or outs[j] != 1):
            gi.append(i); i += 1
        groups.append((gi, gj))
    return groups


def _permute(A, node, v):
    ids = A.val(v.ins[0])
    return None if ids is None else np.transpose(ids, v.attrs["perm"])


def _expand(A, node, v):
    ids = A.val(v.ins[0])
    return _fit(ids, A.out_shape(node))


def _index(A: ScaleAnalysis, node, v):
    ids = A.val(v.ins[0])
    if ids is None:
        return None
    idx = v.attrs["index"]
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(isinstance(i, (torch.fx.Node, torch.Tensor, list)) for i in idx):
        # advanced indexing: keep only a single scale for the whole tensor (sound, coarse)
        one = A.collapse(ids, list(range(ids.ndim)))
        return np.broadcast_to(one.reshape(-1)[:1], (1,) * len(A.out_shape(node))).copy()
    in_shape = A.shape(v.ins[0])
    # expand Ellipsis
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out_idx = []
    for i in idx:
        if i is Ellipsis:
            out_idx += [slice(None)] * (len(in_shape) - n_real)
        else:
            out_idx.append(i)
    res = []
    ax = 0
    for i in out_idx:
        if i is None:
            res.append(None)
            continue
        if ids.shape[ax] == 1:
            res.append(0 if isinstance(i, int) else slice(None))
        else:
            res.append(i)
        ax += 1
    return ids[tuple(res)]


def _split(A: ScaleAnalysis, node, v):
    ids = A.val(v.ins[0])
    outs = node.meta.get("val")
    dim = v.attrs["dim"]
    if ids is None:
        return tuple(None for _ in outs)
    parts = []
    start = 0
    for o in outs:
        size = o.shape[dim] if not v.attrs["squeeze"] else 1
        if ids.shape[dim] == 1:
            p = ids
        else:
            p = np.take(ids, np.arange(start, start + size), axis=dim)
        if v.attrs["squeeze"]:
            p = np.take(p, 0, axis=dim)
        parts.append(p)
        start += size
    return tuple(parts)


def _pick(A, node, v):
    val = A.val(v.ins[0])
    if val is None:
        return None
    return val[v.attrs["i"]]


def _full_along(A, ids, shape, dim, nd):
    if ids is None:
        ids = np.zeros((1,) * nd, dtype=np.int64)
    ids = _fit(ids, shape)
    target = list(ids.shape)
    target[dim] = shape[dim]
    return np.broadcast_to(ids, target)


def _cat(A: ScaleAnalysis, node, v):
    nd = len(A.out_shape(node))
    # torch.cat skips empty 1-d operands (an empty KV cache): they have no coordinates
    ins = [x for x in v.ins if not (nd > 1 and A.shape(x) == (0,))]
    vals = [A.val(x) for x in ins]
    if all(x is None for x in vals):
        return None
    dim = v.attrs["dim"]
    shapes = [A.shape(x) for x in ins]
    arrs = [_full_along(A, ids, s, dim, nd) for ids, s in zip(vals, shapes)]
    # common broadcast over the other axes
    other = [max(a.shape[k] for a in arrs) for k in range(nd)]
    arrs = [np.broadcast_to(a, [a.shape[k] if k == dim else other[k] for k in range(nd)]) for a in arrs]
    return np.concatenate(arrs, axis=dim)


def _stack(A, node, v):
    dim = v.attrs["dim"]
    vals = [A.val(x) for x in v.ins]
    if all(x is None for x in vals):
        return None
    nd = len(A.out_shape(node))
    arrs = []
    for ids in vals:
        ids = np.zeros((1,) * (nd - 1), dtype=np.int64) if ids is None else _fit(ids, (0,) * (nd - 1))
        arrs.append(np.expand_dims(ids, dim))
    other = [max(a.shape[k] for a in arrs) for k in range(nd)]
    arrs = [np.broadcast_to(a, [1 if k == dim else other[k] for k in range(nd)]) for a in arrs]
    return np.concatenate(arrs, axis=dim)


# ----------------------------------------------------------------------------- arithmetic

def _add(A: ScaleAnalysis, node, v):
    a, b = A.val(v.ins[0]), A.val(v.ins[1])
    shape = A.out_shape(node)
    if a is None and b is None:
        return None
    if a is None or b is None:
        other = v.ins[0] if a is None else v.ins[1]
        if _is_zero_const(other):
            return _fit(a if b is None else b, shape)
        if _is_eps_const(other) and _feeds_normalizer(node):  # `var + eps`: exact only as eps -> 0
            live = a if b is None else b
            A.sys.mark_eps(live)
            return _fit(live, shape)
        A.broken(node, "adds a term that does not scale (constant, data or broken branch)", a, b)
        return None
    a, b = _fit(a, shape), _fit(b, shape)
    A.sys.eq(a, b)
    return np.broadcast_arrays(a, b)[0].copy() if a.size >= b.size else np.broadcast_arrays(a, b)[1].copy()


def _is_zero_const(x):
    return isinstance(x, (int, float)) and x == 0


#: largest constant added to a scaled tensor that is read as a normalization's eps
EPS_CONST = 1e-3


def _is_eps_const(x):
    return isinstance(x, float) and 0 < x <= EPS_CONST


def _feeds_normalizer(node) -> bool:
    """The sum is only read by a (r)sqrt / power or as a divisor: the ``var + eps`` of a
    normalization written with primitive ops, not a constant added to a unit's value."""
    users = list(node.users)
    return bool(users) and all(
        u.meta["fxc"].kind == "power" or (u.meta["fxc"].kind == "div" and u.meta["fxc"].ins[1] is node)
        for u in users)


def _mul(A: ScaleAnalysis, node, v):
    a, b = A.val(v.ins[0]), A.val(v.ins[1])
    shape = A.out_shape(node)
    if a is None and b is None:
        return None
    if a is None or b is None:
        return _fit(a if b is None else b, shape)
    a, b = _fit(a, shape), _fit(b, shape)
    out = A.sys.new(np.broadcast_shapes(a.shape, b.shape))
    A.sys.lin([(1, out), (-1, a), (-1, b)])
    return out


def _div(A: ScaleAnalysis, node, v):
    a, b = A.val(v.ins[0]), A.val(v.ins[1])
    shape = A.out_shape(node)
    if b is None:
        return _fit(a, shape)
    a = np.zeros((1,) * len(shape), dtype=np.int64) if a is None else _fit(a, shape)
    b = _fit(b, shape)
    out = A.sys.new(np.broadcast_shapes(a.shape, b.shape))
    A.sys.lin([(1, out), (-1, a), (1, b)])
    return out


def _power(A: ScaleAnalysis, node, v):
    a = A.val(v.ins[0])
    if a is None:
        return None
    p = v.attrs["p"]
    if p == 1:
        return a
    out = A.sys.new(a.shape)
    A.sys.lin([(1, out), (-p, a)])
    return out


def _reduce(A: ScaleAnalysis, node, v):
    ids = A.val(v.ins[0])
    if ids is None:
        return None
    dims = v.attrs["dims"]
    ids = A.collapse(ids, dims)
    if not v.attrs["keepdim"]:
        ids = np.squeeze(ids, axis=tuple(dims)) if dims else ids
    return _fit(ids, A.out_shape(node))


def _pool(A: ScaleAnalysis, node, v):
    ids = A.val(v.ins[0])
    if ids is None:
        return None
    k = int(v.attrs["k"])  # the trailing k axes are pooled (an unbatched input has no batch axis)
    return A.collapse(ids, list(range(ids.ndim - k, ids.ndim)))


def _softmax(A, node, v):
    A.broken(node, "softmax is not scale invariant (its input must keep scale 0)", A.val(v.ins[0]))
    return None


def _matmul(A: ScaleAnalysis, node, v):
    a, b = A.val(v.ins[0]), A.val(v.ins[1])
    if a is None and b is None:
        return None
    sa, sb = A.shape(v.ins[0]), A.shape(v.ins[1])
    z = lambda s: np.zeros((1,) * len(s), dtype=np.int64)  # noqa: E731
    a = z(sa) if a is None else a
    b = z(sb) if b is None else b
    if len(sa) == 1:
        a = a[None]
    if len(sb) == 1:
        b = b[:, None]
    out = bilinear_scales(A, a, b)
    if len(sa) == 1:
        out = out[..., 0, :]
    if len(sb) == 1:
        out = out[..., 0]
    return _fit(out, A.out_shape(node))


#: above this many (m, k, n) triples a product's equations are written in factored form
FACTOR_ABOVE = 1 << 16


def bilinear_scales(A: ScaleAnalysis, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Output ids of a (..., m, k) @ (..., k, n) product.

    Every term a[m, k]·b[k, n] of out[m, n] must scale alike: out[m, n] = a[m, k] + b[k, n] for
    every k (m·k·n equations). That holds exactly when a = α[m] + γ[k], b = β[n] − γ[k] and
    out = α[m] + β[n] (fix k = 0 to build α, β, γ): m·k + k·n + m·n equations, the form used
    above :data:`FACTOR_ABOVE` triples (attention logits q·kᵀ whose positions carry their own
    scales, RoPE at 257 tokens: T²·d rows would not fit in memory). Both forms have the same
    solutions; the direct one is kept for small products because the kernel basis it leads to
    is the one the GL and attention passes recognise as subsumed."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k, n = a.shape[-2], max(a.shape[-1], b.shape[-2]), b.shape[-1]
    if int(np.prod(batch, dtype=np.int64)) * m * k * n <= FACTOR_ABOVE:
        out = A.sys.new(batch + (m, n))
        A.sys.lin([(1, out[..., :, None, :]), (-1, a[..., :, :, None]), (-1, b[..., None, :, :])])
        return out
    alpha, gamma, beta = A.sys.new(batch + (m,)), A.sys.new(batch + (k,)), A.sys.new(batch + (n,))
    A.sys.lin([(1, a), (-1, alpha[..., :, None]), (-1, gamma[..., None, :])])
    A.sys.lin([(1, b), (-1, beta[..., None, :]), (1, gamma[..., :, None])])
    out = A.sys.new(batch + (m, n))
    A.sys.lin([(1, out), (-1, alpha[..., :, None]), (-1, beta[..., None, :])])
    return out


def _output(A: ScaleAnalysis, node, v):
    for leaf in leaves(v.ins[0]):
        if not isinstance(leaf, torch.fx.Node):
            continue
        ids = A.val(leaf)
        if ids is not None:
            A.sys.zero(ids)
    return None


def _zeros(nd: int) -> np.ndarray:
    return np.zeros((1,) * nd, dtype=np.int64)


def _sdpa(A: ScaleAnalysis, node, v):
    """softmax(q kᵀ·s + mask) v: every logit term q[..., l, c] + k[..., t, c] has scale 0 (the
    softmax forgets no scale); the output carries v's scale, constant over the key axis t.
    With enable_gqa, key/value head i serves query heads i·g ... i·g + g − 1 (axis −3)."""
    q, k, val, mask = (v.ins + [None] * 4)[:4]
    if isinstance(mask, torch.fx.Node) and A.val(mask) is not None:
        A.broken(node, "attention mask carries a parameter scale", A.val(mask))
    sq, sk, sv = A.shape(q), A.shape(k), A.shape(val)
    iq, ik, iv = [_zeros(len(s)) if A.val(x) is None else A.val(x) for x, s in ((q, sq), (k, sk), (val, sv))]
    if v.attrs.get("enable_gqa") and len(sq) >= 3 and sk[-3] != sq[-3]:
        rep = sq[-3] // sk[-3]
        ik = np.repeat(ik, rep, axis=-3) if ik.shape[-3] > 1 else ik
        iv = np.repeat(iv, rep, axis=-3) if iv.shape[-3] > 1 else iv
    # q[l, c] + k[t, c] = 0 for every query l and key t: both constant along their positions
    iq = A.collapse(iq, [iq.ndim - 2])
    ik = A.collapse(ik, [ik.ndim - 2])
    A.sys.lin([(1, iq), (1, ik)])
    out = A.collapse(iv, [iv.ndim - 2])
    return _fit(None if not out.any() else out, A.out_shape(node))


def _einsum_letters(eq: str, ndims: list[int]) -> tuple[list[str], str] | None:
    """Operand and output letters of an einsum equation, ellipses spelled out (None: no rule)."""
    lhs, arrow, rhs = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        return None
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    widths = [nd - (len(t) - 3) if "..." in t else 0 for t, nd in zip(terms, ndims)]
    ell = "".join(spare[:max(widths, default=0)])
    terms = [t.replace("...", ell[len(ell) - w:] if w else "") for t, w in zip(terms, widths)]
    if not arrow:
        joined = "".join(terms)
        rhs = ell + "".join(sorted(c for c in set(joined) if joined.count(c) == 1 and c not in ell))
    rhs = rhs.replace("...", ell)
    if any(len(set(t)) != len(t) for t in terms + [rhs]):
        return None  # repeated letters (diagonals) have no rule
    return terms, rhs


def _einsum(A: ScaleAnalysis, node, v):
    """Each output entry is a sum of products: its scale equals the sum of the operands' scales
    for every combination of the contracted letters (like matmul)."""
    shapes = [A.shape(x) for x in v.ins]
    if any(s is None for s in shapes):
        return _breaker(A, node, v)
    parsed = _einsum_letters(v.attrs["eq"], [len(s) for s in shapes])
    if parsed is None:
        A.broken(node, f"einsum {v.attrs['eq']!r} has no rule", *[A.val(x) for x in v.ins])
        return None
    terms, rhs = parsed
    vals = [A.val(x) for x in v.ins]
    if all(x is None for x in vals):
        return None
    letters = sorted(set("".join(terms)) | set(rhs))
    size = {c: 1 for c in letters}
    vals = [_zeros(len(t)) if x is None else x for x, t in zip(vals, terms)]
    for x, t in zip(vals, terms):
        for c, n in zip(t, x.shape):
            size[c] = max(size[c], n)

    def joint(x, t):  # move an operand's ids onto the joint letter axes
        src = [t.index(c) for c in letters if c in t]
        y = np.transpose(x, src)
        return y.reshape([x.shape[t.index(c)] if c in t else 1 for c in letters])

    out = A.sys.new(tuple(size[c] for c in rhs))
    out_j = joint(out, rhs)
    A.sys.lin([(1, out_j)] + [(-1, joint(x, t)) for x, t in zip(vals, terms)])
    return _fit(out, A.out_shape(node))


def _mha(A: ScaleAnalysis, node, v):
    """nn.MultiheadAttention (packed in_proj): rows [0:E) make queries, [E:2E) keys, [2E:3E)
    values, each block a linear site with its own offset; q_c + k_c = 0 for every coordinate;
    the output projection reads the value coordinates."""
    q, k, val, w_in, b_in, w_out, b_out = v.ins[:7]
    E = int(v.attrs["embed_dim"])
    for m in v.attrs.get("masks", []):
        if A.val(m) is not None:
            A.broken(node, "attention mask carries a parameter scale", A.val(m))
    s_out = A.sys.new((3 * E,))
    inputs = [q] if q is k is val else [q, k, val]  # self-attention: one site for all rows
    for blk, x in enumerate(inputs):  # else three sites, each reading one row block
        ids = A.val(x)
        s = None if ids is None else A.feature_vector(ids, -1, E)
        t = s_out if len(inputs) == 1 else A.sys.new((3 * E,))
        A.matrix_site(w_in.name, s, t, 0)
        if len(inputs) > 1:
            rows = slice(blk * E, (blk + 1) * E)
            A.sys.eq(s_out[rows], t[rows])
    bias = A.vector(b_in)
    if bias is not None:
        A.sys.eq(bias, s_out)
    A.sys.lin([(1, s_out[:E]), (1, s_out[E:2 * E])])
    t = A.sys.new((E,))
    A.matrix_site(w_out.name, s_out[2 * E:], t, 0)
    ob = A.vector(b_out)
    if ob is not None:
        A.sys.eq(ob, t)
    out = A.at_axis(t, -1, len(A.shape(q)))
    outs = node.meta.get("val")
    return (out, None) if isinstance(outs, (tuple, list)) else out


RULES = {
    "input": _no_scale,
    "const": _no_scale,
    "meta": _no_scale,
    "param": _no_scale,  # raw uses are resolved where the parameter is consumed
    "output": _output,
    "linear": _linear,
    "conv": _conv,
    "embedding": _embedding,
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "rms_norm": _layer_norm,
    "group_norm": _group_norm,
    "homog": _homog,
    "identity": _passthrough,
    "dropout": _passthrough,  # a random 0/1 mask commutes with positive scaling
    "breaker": _breaker,
    "reshape": _reshape,
    "expand": _expand,
    "permute": _permute,
    "index": _index,
    "split": _split,
    "pick": _pick,
    "cat": _cat,
    "stack": _stack,
    "add": _add,
    "mul": _mul,
    "div": _div,
    "power": _power,
    "reduce": _reduce,
    "pool": _pool,
    "softmax": _softmax,
    "matmul": _matmul,
    "sdpa": _sdpa,
    "einsum": _einsum,
    "mha": _mha,
}
