"""Attention heads, LAWS.md §3.3: per-head GL symmetries found from the graph's index maps.

Every output row of a Linear is a *unit* (a row of its weight and the matching bias entry).
Units travel as integer arrays through the ops that only move coordinates (reshape, permute,
split, slice, cat, expand, scalar multiples: the index maps of the scale engine), so a head
boundary is wherever the graph's reshapes put it, never a guess. Two bilinear patterns give a
unit vector a group structure (a *member*: the units along one axis at one position of the
other axes):

* a contraction of two unit tensors, ``q[..., l, c]·k[..., s, c]`` (sdpa, matmul, einsum):
  the q member of a head and the k member it meets transform as M and M⁻ᵀ;
* a contraction of a unit tensor with a unit-free one over another axis, ``P[..., l, s] v[..., s, c]``
  (the value path): the output coordinates are new *post* units, transforming with v's M.

Members linked this way form a group sharing one invertible M (grouped-query heads: several
query members meet one key member). A Linear that reads units as input features is a
*reader* (its columns transform by M⁻¹). Any other use of a unit (an add, an activation, a
norm, RoPE's position-dependent rotation, the model output...) taints it. A group whose units
are all untainted, whose producers and readers are single-use trainable parameters, and whose
readers read each member whole, gives the law

    H = Σ_q-side [W b][W b]ᵀ − Σ_k-side [W b][W b]ᵀ − Σ_readers Rᵀ R     (r(r+1)/2 entries)

(``attention_qk`` when the group pairs queries and keys, ``attention_vo`` otherwise). The key
bias of a key member whose logits reach a softmax over the keys only through shifts, masks and
scalings is conserved entry by entry (kind ``translation``, LAWS.md §3.3/§3.5).
nn.MultiheadAttention (the ``mha`` op kind) is described to the same machinery by its packed
layout. The gram families replace the diagonal laws of the scale engine on their diagonal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from fxcons.derive import _named_family, remove_subsumed
from fxcons.lawset import LawFamily, Term
from fxcons.ops import ParamRef
from fxcons.scale import Breaker, ScaleAnalysis, rule_failure

from . import rescale as R

#: ops that only move coordinates: the scale engine's rules, applied to unit arrays
SHAPE_RULES = {
    "reshape": R._reshape, "permute": R._permute, "expand": R._expand, "index": R._index,
    "split": R._split, "pick": R._pick, "cat": R._cat, "stack": R._stack,
    "identity": R._passthrough,
}


@dataclass
class _Producer:
    """A linear site whose output rows are units."""

    weight: str
    axis: int  # weight axis indexing the output rows
    bias: str | None


@dataclass
class _Member:
    units: np.ndarray  # (r,) unit ids in coordinate order
    role: str  # "q", "k", "v" (a value operand) or "post"
    keybias: bool = False  # a key member whose logits reach a softmax over keys


@dataclass
class _Read:
    node: fx.Node
    weight: str
    axis: int  # weight axis indexing the input features
    units: np.ndarray
    cols: np.ndarray


class _UnitEnv:
    """The interface of :class:`ScaleAnalysis` that the shape rules use, on unit arrays."""

    shape = staticmethod(ScaleAnalysis.shape)
    out_shape = staticmethod(ScaleAnalysis.shape)

    def __init__(self, owner: "HeadAnalysis") -> None:
        self.owner = owner

    def val(self, x):
        return self.owner.env.get(x) if isinstance(x, fx.Node) else None

    def collapse(self, ids, axes, keep=True):
        return self.owner.collapse(ids, axes, keep)


class HeadAnalysis:
    def __init__(self, cap) -> None:
        self.cap = cap
        self.env: dict = {}
        self.n_units = 1  # 0: a coordinate that is no unit
        self.unit_prod: list[np.ndarray] = [np.array([-1])]
        self.unit_row: list[np.ndarray] = [np.array([0])]
        self.producers: list[_Producer] = []
        self.members: list[_Member] = []
        self.member_of_key: dict[bytes, int] = {}
        self.links: list[tuple[int, int, int]] = []  # (member, member, parity: +1 same M, -1 dual)
        self.reads: list[_Read] = []
        self.taints: list[np.ndarray] = []
        self.taint_why: list[tuple[np.ndarray, fx.Node, str]] = []
        self.shape_env = _UnitEnv(self)

    # ------------------------------------------------------------------ units
    def new_units(self, n: int, producer: int) -> np.ndarray:
        ids = np.arange(self.n_units, self.n_units + n, dtype=np.int64)
        self.n_units += n
        self.unit_prod.append(np.full(n, producer))
        self.unit_row.append(np.arange(n))
        return ids

    def taint(self, ids, node: fx.Node, why: str) -> None:
        for a in _arrays(ids):
            live = a[a != 0]
            if live.size:
                self.taints.append(np.unique(live))
                self.taint_why.append((self.taints[-1], node, why))

    def collapse(self, ids, axes, keep=True):
        """Units constant along ``axes`` (else tainted: the op mixes coordinates there)."""
        if ids is None:
            return None
        for a in axes:
            if ids.shape[a] > 1:
                first = np.take(ids, [0], axis=a)
                if not (ids == first).all():
                    self.taint(ids, self._node, "an op mixes unit coordinates")
                ids = first
        if not keep and axes:
            ids = np.squeeze(ids, axis=tuple(axes))
        return ids

    def member(self, units: np.ndarray, role: str, keybias: bool = False) -> int:
        units = np.ascontiguousarray(units.reshape(-1), dtype=np.int64)
        key = role.encode() + units.tobytes()
        i = self.member_of_key.get(key)
        if i is None:
            i = len(self.members)
            self.members.append(_Member(units, role, keybias))
            self.member_of_key[key] = i
        else:
            self.members[i].keybias &= keybias
        return i

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        for node in self.cap.gm.graph.nodes:
            self._node = node
            v = node.meta["fxc"]
            rule = SHAPE_RULES.get(v.kind)
            handler = getattr(self, "_" + v.kind, None)
            try:
                if rule is not None:
                    out = _none_if_empty(rule(self.shape_env, node, v))
                else:
                    out = self._opaque(node, v) if handler is None else handler(node, v)
            except Exception as e:  # a rule that cannot read this node spoils the heads through it
                out = self._opaque(node, v, rule_failure(v.kind, e))
            self.env[node] = out

    def _meta(self, node, v):
        """Sizes, shapes, ``*_like`` constants and comparisons (``fxcons.ops.SHAPE_ONLY``) do
        not use a tensor's values in a differentiable way."""
        return None

    def _input(self, node, v):
        return None

    _param = _const = _input

    def _ins(self, node):
        return [self.env.get(x) for x in node.all_input_nodes]

    def _opaque(self, node, v, why: str | None = None):
        """Taint every unit reaching ``node``. An elementwise op still passes its first
        operand's (now tainted) units on, so a head it spoils is reported with this reason."""
        why = why or v.attrs.get("why") or f"op kind {v.kind!r} does not carry attention coordinates"
        self.taint(self._ins(node), node, why)
        first = next((x for x in v.ins if isinstance(x, fx.Node)), None)
        units = self.env.get(first) if first is not None else None
        shape = ScaleAnalysis.shape(node)
        if isinstance(units, np.ndarray) and shape is not None and shape == ScaleAnalysis.shape(first):
            return units
        return None

    # ------------------------------------------------------------------ rules
    def _dropout(self, node, v):
        if v.attrs.get("active"):
            return self._opaque(node, v, "active dropout masks coordinates one by one")
        return R._passthrough(self.shape_env, node, v)

    def _mul(self, node, v):
        return self._scalar_multiple(node, v, both=True)

    def _div(self, node, v):
        return self._scalar_multiple(node, v, both=False)

    def _scalar_multiple(self, node, v, both: bool):
        a, b = v.ins[:2]
        ua, ub = self.shape_env.val(a), self.shape_env.val(b)
        if ua is not None and ub is None and _is_scalar(b):
            return R._fit(ua, ScaleAnalysis.shape(node))
        if both and ub is not None and ua is None and _is_scalar(a):
            return R._fit(ub, ScaleAnalysis.shape(node))
        return self._opaque(node, v, "an elementwise product by a tensor acts on each coordinate separately")

    def _reduce(self, node, v):
        if v.attrs["fn"] not in ("sum", "mean", "nansum", "nanmean"):
            return self._opaque(node, v)
        ids = self.shape_env.val(v.ins[0])
        if ids is None:
            return None
        ids = self.collapse(ids, v.attrs["dims"], keep=v.attrs["keepdim"])
        return R._fit(ids, ScaleAnalysis.shape(node))

    def _linear(self, node, v):
        x, w, b = (v.ins + [None] * 3)[:3]
        layout = v.attrs.get("layout", "out_in")
        read_axis, prod_axis = (1, 0) if layout == "out_in" else (0, 1)
        return self._linear_site(node, x, w, b, read_axis, prod_axis)

    def _linear_site(self, node, x, w, b, read_axis: int, prod_axis: int):
        ux = self.shape_env.val(x)
        if not isinstance(w, ParamRef):
            self.taint(ux, node, "a product with a matrix that is not a parameter")
            return None
        if ux is not None:
            ux = self.collapse(ux, list(range(ux.ndim - 1)))
            u = np.broadcast_to(ux.reshape(-1), (ScaleAnalysis.shape(x)[-1],))
            cols = np.flatnonzero(u)
            if cols.size:
                self.reads.append(_Read(node, w.name, read_axis, u[cols].copy(), cols))
        if b is not None and not isinstance(b, ParamRef):
            return None
        shape = ScaleAnalysis.shape(node)
        self.producers.append(_Producer(w.name, prod_axis, b.name if b is not None else None))
        ids = self.new_units(shape[-1], len(self.producers) - 1)
        return ScaleAnalysis.at_axis(ids, -1, len(shape))

    def _matmul(self, node, v):
        a, b = v.ins[:2]
        sa, sb = ScaleAnalysis.shape(a), ScaleAnalysis.shape(b)
        if isinstance(b, ParamRef) and len(sb) == 2:  # x @ W: a linear with W stored (in, out)
            return self._linear_site(node, a, b, None, 0, 1)
        if len(sa) < 2 or len(sb) < 2:
            return self._opaque(node, v)
        nb = max(len(sa), len(sb)) - 2
        batch = "".join(chr(ord("A") + i) for i in range(nb))
        ta = batch[nb - (len(sa) - 2):] + "mk"
        tb = batch[nb - (len(sb) - 2):] + "kn"
        sizes = {"m": sa[-2], "k": sa[-1], "n": sb[-1]}
        return self._bilinear(node, a, b, ta, tb, batch + "mn", sizes)

    def _einsum(self, node, v):
        if len(v.ins) != 2:
            return self._opaque(node, v)
        shapes = [ScaleAnalysis.shape(x) for x in v.ins]
        parsed = R._einsum_letters(v.attrs["eq"], [len(s) for s in shapes])
        if parsed is None or any(isinstance(x, ParamRef) for x in v.ins):
            return self._opaque(node, v)
        (ta, tb), to = parsed
        sizes = {c: n for t, shp in zip((ta, tb), shapes) for c, n in zip(t, shp)}
        return self._bilinear(node, v.ins[0], v.ins[1], ta, tb, to, sizes)

    def _sdpa(self, node, v):
        q, k, val, mask = (v.ins + [None] * 4)[:4]
        uq, uk, uv = (self.shape_env.val(x) for x in (q, k, val))
        self.taint(self.shape_env.val(mask), node, "attention mask")
        sq, sk = ScaleAnalysis.shape(q), ScaleAnalysis.shape(k)
        if v.attrs.get("enable_gqa") and len(sq) >= 3 and sk[-3] != sq[-3]:
            rep = sq[-3] // sk[-3]
            uk = None if uk is None else (np.repeat(uk, rep, axis=-3) if uk.shape[-3] > 1 else uk)
            uv = None if uv is None else (np.repeat(uv, rep, axis=-3) if uv.shape[-3] > 1 else uv)
        nb = len(sq) - 2
        batch = "".join(chr(ord("A") + i) for i in range(nb))
        self._pair(node, uq, uk, batch + "lc", batch + "sc", batch + "ls", {"c": sq[-1]}, keybias=True)
        out = ScaleAnalysis.shape(node)
        return self._value(node, uv, batch + "sc", batch + "ls", batch + "lc", {"c": out[-1]}, out)

    def _mha(self, node, v):
        """nn.MultiheadAttention, packed: rows [0, E) queries, [E, 2E) keys, [2E, 3E) values
        of in_proj; head h owns rows h·d ... h·d + d − 1 of each block and the same columns
        of out_proj."""
        self.taint(self._ins(node), node, "input of nn.MultiheadAttention")
        q, k, val, w_in, b_in, w_out = v.ins[:6]
        E, H = int(v.attrs["embed_dim"]), int(v.attrs["heads"])
        d = E // H
        self.producers.append(_Producer(w_in.name, 0, b_in.name if isinstance(b_in, ParamRef) else None))
        units = self.new_units(3 * E, len(self.producers) - 1)
        post = self.new_units(E, -1)
        for h in range(H):
            rows = slice(h * d, (h + 1) * d)
            mq = self.member(units[:E][rows], "q")
            mk = self.member(units[E:2 * E][rows], "k", keybias=True)
            mv = self.member(units[2 * E:][rows], "v")
            mp = self.member(post[rows], "post")
            self.links += [(mq, mk, -1), (mv, mp, 1)]
        self.reads.append(_Read(node, w_out.name, 1, post, np.arange(E)))
        return None

    def _output(self, node, v):
        self.taint([self.env.get(x) for x in node.all_input_nodes], node, "reaches the model output")
        return None

    # ------------------------------------------------------------------ bilinear ops
    def _bilinear(self, node, a, b, ta: str, tb: str, to: str, sizes: dict):
        ua, ub = self.shape_env.val(a), self.shape_env.val(b)
        if ua is not None and ub is not None:
            self._pair(node, ua, ub, ta, tb, to, sizes, keybias=False)
            return None
        out = ScaleAnalysis.shape(node)
        if ua is not None:
            return self._value(node, ua, ta, tb, to, sizes, out)
        if ub is not None:
            return self._value(node, ub, tb, ta, to, sizes, out)
        return None

    def _pair(self, node, ux, uy, tx: str, ty: str, to: str, sizes: dict, keybias: bool) -> None:
        """Contraction of two unit tensors over their shared letters not in the output: one
        (query, key) member pair per position of the shared batch letters."""
        if ux is None or uy is None:  # units meet data: no pairing, and nothing may move them
            self.taint([ux, uy], node, "a contraction of units with data")
            return
        contracted = [c for c in tx if c in ty and c not in to]
        batch = [c for c in tx if c in ty and c in to]
        if not contracted:
            self.taint([ux, uy], node, "a product of two unit tensors with nothing contracted")
            return
        xs = self._layout(ux, tx, batch, contracted, sizes)
        ys = self._layout(uy, ty, batch, contracted, sizes)
        nb = len(batch)
        bshape = np.broadcast_shapes(xs.shape[:nb], ys.shape[:nb])
        xs = np.broadcast_to(xs, bshape + xs.shape[nb:])
        ys = np.broadcast_to(ys, bshape + ys.shape[nb:])
        if not keybias:
            free_y = [c for c in ty if c in to and c not in tx]
            keybias = len(free_y) == 1 and _softmax_absorbs(node, to.index(free_y[0]))
        for p in np.ndindex(*bshape):
            mq = self.member(xs[p], "q")
            mk = self.member(ys[p], "k", keybias=keybias)
            self.links.append((mq, mk, -1))

    def _layout(self, u, t: str, batch: list[str], contracted: list[str], sizes: dict) -> np.ndarray:
        """Units constant over the other letters, as (batch..., flattened contracted letters)."""
        other = [i for i, c in enumerate(t) if c not in batch and c not in contracted]
        u = self.collapse(u, other)
        keep = [t.index(c) for c in batch + contracted]
        u = np.transpose(u, keep + other).reshape([u.shape[i] for i in keep])
        nb = len(batch)
        u = np.broadcast_to(u, u.shape[:nb] + tuple(sizes[c] for c in contracted))
        return u.reshape(u.shape[:nb] + (-1,))

    def _value(self, node, ux, tx: str, ty: str, to: str, sizes: dict, out_shape):
        """Units x contracted with a unit-free y over other letters (P @ V): new post units,
        one member per position of the letters x shares with y (each position may see a
        different y), linked to x's member there (the same M acts on both)."""
        if ux is None:
            return None
        batch = [c for c in tx if c in ty and c in to]
        free = [c for c in tx if c in to and c not in ty]
        summed = [tx.index(c) for c in tx if c not in to]
        u = self.collapse(ux, summed)
        u = np.transpose(u, [tx.index(c) for c in batch + free] + summed)
        u = u.reshape(u.shape[:len(batch) + len(free)])
        nb = len(batch)
        u = np.broadcast_to(u, u.shape[:nb] + tuple(sizes[c] for c in free))
        post = self.new_units(u.size, -1).reshape(u.shape)
        for p in np.ndindex(*u.shape[:nb]):
            mv = self.member(u[p], "v")
            mp = self.member(post[p], "post")
            self.links.append((mv, mp, 1))
        letters = batch + free
        res = np.transpose(post, [letters.index(c) for c in to if c in letters])
        res = res.reshape([post.shape[letters.index(c)] if c in letters else 1 for c in to])
        return R._fit(res, out_shape)

    # ------------------------------------------------------------------ laws
    def families(self) -> tuple[list[LawFamily], list[LawFamily], list[Breaker]]:
        prod = np.concatenate(self.unit_prod)
        row = np.concatenate(self.unit_row)
        tainted = np.zeros(self.n_units, dtype=bool)
        for t in self.taints:
            tainted[t] = True
        sites = _param_uses(self.cap)

        def param_ok(name):
            return name is not None and sites.get(name, 0) == 1 and self.cap.params[name].trainable

        # a unit may sit in one member only (and at one position)
        owner = np.full(self.n_units, -1)
        bad = np.zeros(len(self.members), dtype=bool)
        for i, m in enumerate(self.members):
            u = m.units
            if (u == 0).any() or len(np.unique(u)) != u.size or tainted[u].any():
                bad[i] = True
                continue
            clash = owner[u]
            for j in np.unique(clash[clash >= 0]):
                bad[i] = bad[j] = True
            owner[u] = i
        # producers: every unit of a producer-side member comes from one valid site
        member_prod = []
        for i, m in enumerate(self.members):
            ps = np.unique(prod[m.units])
            if m.role == "post":
                member_prod.append(None)
                if (ps != -1).any():
                    bad[i] = True
                continue
            if ps.size != 1 or ps[0] < 0:
                bad[i] = True
                member_prod.append(None)
                continue
            p = self.producers[int(ps[0])]
            if not param_ok(p.weight) or (p.bias is not None and not param_ok(p.bias)):
                bad[i] = True
            member_prod.append(p)
        # readers, per unit of a member (most reads are of units no head owns: skip them)
        reads_of: dict[int, list[tuple[int, int]]] = {}
        for k, rd in enumerate(self.reads):
            mine = owner[rd.units] >= 0
            for uid, col in zip(rd.units[mine].tolist(), rd.cols[mine].tolist()):
                reads_of.setdefault(uid, []).append((k, col))
        # groups: union-find with parity
        parent = list(range(len(self.members)))
        parity = [1] * len(self.members)

        def find(i):
            if parent[i] == i:
                return i, 1
            r, p = find(parent[i])
            parent[i] = r
            parity[i] *= p
            return r, parity[i]

        conflict = set()
        for i, j, s in self.links:
            (ri, pi), (rj, pj) = find(i), find(j)
            if ri == rj:
                if pi * pj != s:
                    conflict.add(ri)
                continue
            parent[rj] = ri
            parity[rj] = pi * pj * s
        groups: dict[int, list[tuple[int, int]]] = {}
        for i in range(len(self.members)):
            r, p = find(i)
            groups.setdefault(r, []).append((i, p))
        blocks = []  # (kind, terms as (param, axis, coef, index list))
        for root, mem in groups.items():
            built = self._group_terms(root in conflict, mem, bad, member_prod, reads_of, param_ok, row)
            if built is not None:
                blocks.append(built)
        grams = _families_of(blocks, self.cap)
        keybias = self._keybias(bad, member_prod, row, param_ok)
        return grams, keybias, self._breakers(tainted, bad)

    def _group_terms(self, conflict, mem, bad, member_prod, reads_of, param_ok, row):
        if conflict or len(mem) < 2 or any(bad[i] for i, _ in mem):
            return None
        r = {self.members[i].units.size for i, _ in mem}
        if len(r) != 1:
            return None
        r = r.pop()
        roles = {self.members[i].role for i, _ in mem}
        # orientation: queries (else producer-side values) transform by M
        ref = next((p for i, p in mem if self.members[i].role == "q"), None)
        if ref is None:
            ref = next((p for i, p in mem if self.members[i].role == "v"), 1)
        terms = []
        for i, p in mem:
            m = self.members[i]
            sign = p * ref
            pr = member_prod[i]
            if pr is not None:
                rows = row[m.units]
                terms.append((pr.weight, pr.axis, float(sign), rows))
                if pr.bias is not None:
                    terms.append((pr.bias, 0, float(sign), rows))
            by_reader: dict[int, dict[int, list[int]]] = {}
            for pos, uid in enumerate(m.units.tolist()):
                for k, col in reads_of.get(uid, []):
                    by_reader.setdefault(k, {}).setdefault(pos, []).append(col)
            for k, cols in by_reader.items():
                rd = self.reads[k]
                if len(cols) != r or any(len(c) != 1 for c in cols.values()) or not param_ok(rd.weight):
                    return None
                terms.append((rd.weight, rd.axis, float(-sign), np.array([cols[pos][0] for pos in range(r)])))
        if not any(t[2] < 0 for t in terms) or not any(t[2] > 0 for t in terms):
            return None
        kind = "attention_qk" if "k" in roles else "attention_vo"
        terms.sort(key=lambda t: (-t[2], t[0], t[1], int(t[3][0])))
        return kind, terms

    def _keybias(self, bad, member_prod, row, param_ok) -> list[LawFamily]:
        rows_of: dict[str, set[int]] = {}
        for i, m in enumerate(self.members):
            pr = member_prod[i]
            if m.role != "k" or not m.keybias or bad[i] or pr is None or pr.bias is None:
                continue
            rows_of.setdefault(pr.bias, set()).update(row[m.units].tolist())
        fams = []
        for bias, rows in rows_of.items():
            idx = np.array(sorted(rows), dtype=np.int64)[:, None]
            fams.append(LawFamily(bias, "translation", "exact", "linear", [Term(bias, "entry", 1.0, idx)],
                                  where=bias.rsplit(".", 1)[0],
                                  note="key bias: q·bk is the same for every key, the softmax over keys forgets it"))
        return fams

    def _breakers(self, tainted, bad) -> list[Breaker]:
        """Where a head's symmetry stopped: the first taint of a unit of a rejected member."""
        want = np.zeros(self.n_units, dtype=bool)
        for i, m in enumerate(self.members):
            if bad[i] and m.role in ("q", "k", "v"):
                want[m.units[m.units != 0]] = True
        out, seen = [], set()
        for ids, node, why in self.taint_why:
            if want[ids].any() and (node.name, why) not in seen:
                seen.add((node.name, why))
                out.append(Breaker(node.name, node.meta["fxc"].where, why, family="attention"))
        return out


# ----------------------------------------------------------------------------- helpers

def _arrays(x):
    if isinstance(x, np.ndarray):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _arrays(y)


def _none_if_empty(x):
    if isinstance(x, np.ndarray) and not x.any():
        return None
    return x


def _is_scalar(x) -> bool:
    if isinstance(x, (int, float)):
        return True
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.numel() == 1


_NEG_FILL = -1e30


def _softmax_absorbs(start: fx.Node, axis: int) -> bool:
    """Every use of ``start`` reaches a softmax over ``axis`` through ops that keep a shift
    constant along that axis (adding masks or biases, scalings constant along it, filling with
    -inf) and nothing else."""
    todo, seen = [(start, axis)], set()
    while todo:
        node, ax = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        nd = len(ScaleAnalysis.shape(node) or ())
        for user in node.users:
            v = user.meta["fxc"]
            if _value_free(user):
                continue
            ins = [x for x in v.ins if x is node]
            if v.kind in ("identity",) or (v.kind == "dropout" and not v.attrs.get("active")):
                todo.append((user, ax))
            elif v.kind == "softmax" and v.ins[0] is node:
                if v.attrs["dim"] % nd != ax % nd:
                    return False
            elif v.kind == "add" and len(ins) == 1:
                other = v.ins[1] if v.ins[0] is node else v.ins[0]
                if isinstance(other, fx.Node) and other in seen:
                    return False
                todo.append((user, ax))
            elif v.kind in ("mul", "div") and len(ins) == 1 and (v.kind == "mul" or v.ins[0] is node):
                other = v.ins[1] if v.ins[0] is node else v.ins[0]
                if not _constant_along(other, ax - nd):
                    return False
                todo.append((user, ax))
            elif _is_neg_fill(user, node):
                todo.append((user, ax))
            else:
                return False
    return True


def _value_free(node: fx.Node) -> bool:
    """Only the shape of the input matters (``ones_like(s[0, 0])``, ``s.size(-1)``)."""
    kind = node.meta["fxc"].kind
    if kind == "meta":
        return True
    return kind in SHAPE_RULES and bool(node.users) and all(_value_free(u) for u in node.users)


def _constant_along(x, neg_axis: int) -> bool:
    if isinstance(x, (int, float)):
        return True
    shape = ScaleAnalysis.shape(x)
    if shape is None:
        return False
    return len(shape) < -neg_axis or shape[neg_axis] == 1


def _is_neg_fill(user: fx.Node, node: fx.Node) -> bool:
    """where(mask, logits, -inf) / masked_fill(logits, mask, -inf)."""
    from fxcons.ops import _fn_name

    name = _fn_name(user.target) if user.op == "call_function" else user.target
    a = user.args
    if name == "where" and len(a) == 3:
        return a[1] is node and a[0] is not node and _is_neg_const(a[2])
    if name in ("masked_fill", "masked_fill_") and len(a) == 3:
        return a[0] is node and a[1] is not node and _is_neg_const(a[2])
    return False


def _is_neg_const(x) -> bool:
    return isinstance(x, (int, float)) and x <= _NEG_FILL


def _families_of(blocks, cap) -> list[LawFamily]:
    """Blocks with the same term structure (params, axes, coefficients) become one family."""
    by_sig: dict[tuple, list] = {}
    for kind, terms in blocks:
        sig = (kind,) + tuple((p, ax, c) for p, ax, c, _ in terms)
        by_sig.setdefault(sig, []).append(terms)
    fams = []
    for sig, blocks_ in by_sig.items():
        kind = sig[0]
        terms = []
        for j, (p, ax, c) in enumerate(sig[1:]):
            index = np.stack([b[j][3] for b in blocks_]).astype(np.int64)
            terms.append(Term(p, "gram", c, index, axis=ax))
        fam = _named_family(terms, kind, "exact", form="gram")
        r = terms[0].index.shape[1]
        n = sum(_row_length(cap.params[t.param].shape, t.axis) for t in terms)
        k = min(r, n)
        fam.independent = fam.blocks * (k * r - k * (k - 1) // 2)
        fam.note = ("per head: Q Qᵀ − K Kᵀ (biases as extra columns)" if kind == "attention_qk"
                    else "per head: V Vᵀ − Oᵀ O (value bias as an extra column)")
        fams.append(fam)
    return fams


def _row_length(shape, axis: int) -> int:
    return int(math.prod(shape)) // shape[axis]


def _param_uses(cap) -> dict[str, int]:
    """How many ops use each parameter (the placeholder / get_attr node itself not counted)."""
    uses: dict[str, int] = {}
    for node in cap.gm.graph.nodes:
        v = node.meta["fxc"]
        if v.kind == "param":
            continue
        for x in v.ins:
            if isinstance(x, ParamRef):
                uses[x.name] = uses.get(x.name, 0) + 1
    return uses


def _entry_laws(fams: list[LawFamily]) -> set[tuple[str, int]]:
    """(param, entry) pairs that are linear laws by themselves."""
    out = set()
    for f in fams:
        if f.form == "linear" and len(f.terms) == 1 and f.terms[0].reducer == "entry":
            t = f.terms[0]
            if t.index.shape[1] == 1:
                out.update((t.param, int(i)) for i in t.index[:, 0])
    return out


def attention_pass(cap, head, fams):
    """Per-head query/key and value/output laws, key-bias laws (LAWS.md §3.3)."""
    an = HeadAnalysis(cap)
    an.run()
    grams, keybias, breakers = an.families()
    # key-bias entries another pass already found are not repeated
    known = _entry_laws(fams)
    new_kb = []
    for f in keybias:
        t = f.terms[0]
        keep = [i for i, e in enumerate(t.index[:, 0]) if (t.param, int(e)) not in known]
        if keep:
            t.index = t.index[keep]
            new_kb.append(f)
    conserved = {p for p, _ in known}  # their squares were dropped from the diagonal laws
    fams = remove_subsumed(fams, grams, both_signs=True, conserved=conserved)
    return fams + grams + new_kb, breakers
