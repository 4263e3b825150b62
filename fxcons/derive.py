"""derive: kernel vectors of the log-scale system -> law families.

A kernel vector ``w`` assigns a rate to every parameter unknown; the law is
``Σ rate · (squared norm of the slice that unknown scales)``. Laws with the same shape (same
parameters, reductions and coefficients, different unit indices) are grouped into one family.
"""
from __future__ import annotations

import numpy as np

from .lawset import LawFamily, Term
from .scale import ScaleAnalysis


def _param_var_table(A: ScaleAnalysis):
    """Arrays over all parameter unknowns: var id, (param, reducer, groups) slot, index."""
    vars_, slots, index = [], [], []
    slot_keys: list[tuple[str, str, int]] = []
    for name, pv in A.params.items():
        if pv.role == "matrix":
            parts = [(pv.axes[0].reshape(-1), "sq0", 1)]
            parts.append((pv.axes[1].reshape(-1), "sq1", pv.groups))
        else:
            parts = [(pv.entries.reshape(-1), "sq", 1)]
        for ids, red, g in parts:
            slot_keys.append((name, red, g))
            vars_.append(ids)
            slots.append(np.full(ids.size, len(slot_keys) - 1))
            index.append(np.arange(ids.size))
    if not vars_:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e, slot_keys
    return np.concatenate(vars_), np.concatenate(slots), np.concatenate(index), slot_keys


def scale_families(A: ScaleAnalysis) -> list[LawFamily]:
    """Kernel vectors -> diag law families, vectorised over all laws (numpy, no per-term Python).

    A kernel vector puts a coefficient on equality classes; every parameter unknown of a class
    contributes the squared norm of the slice it scales (column unknowns with a minus sign).
    Each law's terms are sorted by (slot, coefficient, index); laws whose (slot, coefficient)
    sequences agree form one family, in order of first appearance in the kernel basis."""
    sol = A.sys.solve()
    var, slot, idx, slot_keys = _param_var_table(A)
    if var.size == 0:
        return []
    cls = sol.label[var]
    order = np.argsort(cls, kind="stable")
    cls_sorted = cls[order]
    vec, vcls, vcoef, veps = sol.kernel(np.unique(cls)).pairs()
    # expand each (vector, class) pair to the parameter unknowns of its class
    lo = np.searchsorted(cls_sorted, vcls, "left")
    cnt = np.searchsorted(cls_sorted, vcls, "right") - lo
    rep = np.repeat(np.arange(len(vec)), cnt)
    offs = np.arange(rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    member = order[lo[rep] + offs]
    # input-side (column) unknowns u_in enter a weight's rate as −u_in
    in_red = {n: ("sq1" if pv.out_axis == 0 else "sq0") for n, pv in A.params.items() if pv.role == "matrix"}
    slot_sign = np.array([-1.0 if in_red.get(n) == red else 1.0 for n, red, _ in slot_keys])
    law, s, i = vec[rep], slot[member], idx[member]
    c = vcoef[rep] * slot_sign[s]
    srt = np.lexsort((i, c, s, law))
    law, s, i, c = law[srt], s[srt], i[srt], c[srt]
    if law.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, law[1:] != law[:-1]])
    ends = np.r_[starts[1:], law.size]
    groups = _group_by_signature(law, s, c, veps, starts, ends)
    fams = []
    for _, eps, L, st in groups:
        st = st[np.argsort(i[st], kind="stable")]  # laws ordered by their first index
        pos = st[:, None] + np.arange(L)[None, :]
        index = i[pos]
        sig_s, sig_c = s[st[0]:st[0] + L], c[st[0]:st[0] + L]
        # consecutive entries of the signature with the same (slot, coef) form one term
        cuts = np.flatnonzero(np.r_[True, (sig_s[1:] != sig_s[:-1]) | (sig_c[1:] != sig_c[:-1]), True])
        terms: list[Term] = []
        for k, j in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            name, red, g = slot_keys[int(sig_s[k])]
            terms.append(Term(name, red, float(sig_c[k]), np.ascontiguousarray(index[:, k:j]), groups=g))
        fams.append(_named_family(terms, "scale" if eps else "rescale", "eps" if eps else "exact"))
    return fams


def _group_by_signature(law, s, c, veps, starts, ends) -> list[tuple[int, bool, int, np.ndarray]]:
    """Group laws whose (eps, slot sequence, coefficient sequence) agree.

    Each law gets a 64-bit polynomial hash of its signature (one vectorised pass); laws are
    grouped by (eps, length, hash), and every group is then compared entry by entry, so a hash
    collision splits a group instead of merging different signatures. Returns
    ``(first law, eps, length, law starts)`` in order of first appearance."""
    lengths = ends - starts
    nlaw = len(starts)
    which = np.repeat(np.arange(nlaw), lengths)
    k = np.arange(law.size) - starts[which]
    rng = np.random.default_rng(0x5EED)
    w = rng.integers(1, 2**63, size=int(lengths.max()), dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        tok = (s.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ c.view(np.uint64)
        h = np.add.reduceat(tok * w[k], starts) if law.size else np.zeros(0, np.uint64)
    e = veps[law[starts]].astype(np.int64)
    srt = np.lexsort((np.arange(nlaw), h, lengths, e))  # stable: law order inside a group
    key = np.stack([e[srt], lengths[srt], h[srt].view(np.int64)], axis=1)
    cut = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1), True])
    out = []
    for a, b in zip(cut[:-1].tolist(), cut[1:].tolist()):
        st = starts[srt[a:b]]
        L = int(lengths[srt[a]])
        pos = st[:, None] + np.arange(L)[None, :]
        pending = np.ones(len(st), dtype=bool)
        while pending.any():  # exact comparison against the group's first pending law
            ref = int(np.flatnonzero(pending)[0])
            same = pending & (s[pos] == s[pos[ref]]).all(axis=1) & (c[pos] == c[pos[ref]]).all(axis=1)
            out.append((int(law[st[ref]]), bool(e[srt[a]]), L, st[same]))
            pending &= ~same
    out.sort(key=lambda grp: grp[0])
    return out


def module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else param


def _short(mods: list[str]) -> str:
    mods = list(dict.fromkeys(mods))
    if not mods:
        return "∅"
    return mods[0] if len(mods) == 1 else f"{mods[0]}(+{len(mods) - 1})"


def _named_family(terms: list[Term], kind: str, exactness: str, form: str = "diag") -> LawFamily:
    prod = [module_of(t.param) for t in terms if t.coef > 0]
    cons = [module_of(t.param) for t in terms if t.coef < 0]
    name = _short(prod) + ("→" + _short(cons) if cons else "")
    where = ", ".join(dict.fromkeys(module_of(t.param) for t in terms))
    return LawFamily(name, kind, exactness, form, terms, where=where)


def dedupe_names(fams: list[LawFamily]) -> None:
    seen: dict[str, int] = {}
    for f in fams:
        base = f"{f.name} {f.kind}[{f.count}]"
        n = seen.get(base, 0)
        seen[base] = n + 1
        f.name = base if n == 0 else f"{base}#{n + 1}"


_GRAM_AXIS_REDUCER = {0: "sq0", 1: "sq1"}


def _canonical(parts: list[tuple[tuple, np.ndarray]]) -> tuple[tuple, np.ndarray]:
    """A law's square terms as (signature, index rows) with a canonical order.

    ``parts``: (key, index (n, k)) per term, key = (param, reducer, groups, coef); a 1-D
    parameter's entry squares (``sq``) and its rows (``sq0``) are the same squares. Terms with
    equal keys are merged and their indices sorted, so two spellings of the same sum of squares
    have the same signature and the same rows."""
    merged: dict[tuple, list[np.ndarray]] = {}
    for (p, red, g, c), idx in parts:
        merged.setdefault((p, "sq0" if red == "sq" else red, int(g), float(c)), []).append(idx)
    sig, cols = [], []
    for key in sorted(merged):
        block = np.concatenate(merged[key], axis=1)
        if block.shape[1] > 1:
            block = np.sort(block, axis=1)
        sig.append((key, block.shape[1]))
        cols.append(block)
    rows = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.int64) if cols else np.zeros((0, 0), np.int64)
    return tuple(sig), rows


def _gram_diagonal_parts(gram: LawFamily, drop: frozenset, sign: float) -> list[tuple[tuple, np.ndarray]] | None:
    """The diagonal entries H[b][j, j] of a gram family as diag-law parts (one row per (b, j))."""
    parts = []
    for t in gram.terms:
        red = _GRAM_AXIS_REDUCER.get(t.axis)
        if red is None:
            return None
        if t.param not in drop:
            parts.append(((t.param, red, 1, sign * t.coef), t.index.reshape(-1, 1)))
    return parts or None


def remove_subsumed(fams: list[LawFamily], grams: list[LawFamily], *, both_signs: bool = False,
                    conserved: frozenset | set = frozenset()) -> list[LawFamily]:
    """Drop the diag laws that are diagonal entries of a gram family (GL(r) and the attention
    head groups contain the rescalings on their diagonal).

    ``both_signs``: also match −H[j, j]. ``conserved``: parameters whose squares an earlier pass
    removed from the diag laws (their entries are laws by themselves): match the diagonal
    entries without them too. Matching is by signature, then by index rows (bytes) per law."""
    target: dict[tuple, set[bytes]] = {}
    drops = [frozenset()] + ([frozenset(conserved)] if conserved else [])
    for gram in grams:
        for drop in drops:
            for sign in ((1.0, -1.0) if both_signs else (1.0,)):
                parts = _gram_diagonal_parts(gram, drop, sign)
                if parts is None:
                    continue
                sig, rows = _canonical(parts)
                target.setdefault(sig, set()).update(r.tobytes() for r in rows)
    if not target:
        return fams
    gram_params = {t.param for g in grams for t in g.terms}
    out = []
    for f in fams:
        if f.form != "diag" or not gram_params.intersection(f.params):
            out.append(f)
            continue
        sig, rows = _canonical([((t.param, t.reducer, t.groups, t.coef), t.index) for t in f.terms])
        hit = target.get(sig)
        if hit is None:
            out.append(f)
            continue
        keep = [u for u, r in enumerate(rows) if r.tobytes() not in hit]
        if len(keep) == f.blocks:
            out.append(f)
        elif keep:
            for t in f.terms:
                t.index = t.index[keep]
            out.append(f)
    return out
