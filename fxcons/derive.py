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
    lengths = ends - starts
    groups: list[tuple[int, bool, int, np.ndarray]] = []  # (first law, eps, length, law starts)
    for L in np.unique(lengths).tolist():
        st = starts[lengths == L]
        pos = st[:, None] + np.arange(L)[None, :]
        sig = np.concatenate([veps[law[st]][:, None].astype(np.float64), s[pos].astype(np.float64), c[pos]], axis=1)
        _, first, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        by_group = np.argsort(inv, kind="stable")
        cuts = np.searchsorted(inv[by_group], np.arange(len(first) + 1))
        for g in range(len(first)):
            groups.append((int(law[st[first[g]]]), bool(sig[first[g], 0]), L, st[by_group[cuts[g]:cuts[g + 1]]]))
    groups.sort(key=lambda grp: grp[0])  # families in order of first appearance in the basis
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


def _diag_law_keys(fam: LawFamily) -> list[frozenset]:
    """Per law of a diag family: the set of (param, reducer-axis, index, coef) it sums."""
    keys = []
    for u in range(fam.blocks):
        items = []
        for t in fam.terms:
            for i in t.index[u].tolist():
                items.append((t.param, t.reducer, t.groups, int(i), float(t.coef)))
        keys.append(frozenset(items))
    return keys


def _gram_diagonal_keys(gram: LawFamily) -> set[frozenset]:
    """The diagonal entries of a gram family written as diag-law keys (row slices of θ)."""
    keys = set()
    r = gram.terms[0].index.shape[1]
    for b in range(gram.blocks):
        for j in range(r):
            items = []
            for t in gram.terms:
                i = int(t.index[b, j])
                red = {0: "sq0", 1: "sq1"}.get(t.axis)
                if red is None:
                    return set()
                items.append((t.param, red, 1, i, float(t.coef)))
            keys.add(frozenset(items))
    return keys


def remove_subsumed(fams: list[LawFamily], gram: LawFamily) -> list[LawFamily]:
    """Drop diag laws that are diagonal entries of ``gram`` (GL(r) contains the rescalings).

    A 1-D parameter (bias) slice ``b[i]`` is written with reducer ``sq`` in diag laws and as
    axis-0 rows in gram terms; both spell the same square, so they are matched as equal.
    """
    target = {frozenset((p, "sq0" if red == "sq" else red, g, i, c) for p, red, g, i, c in k)
              for k in _gram_diagonal_keys(gram)}
    out = []
    for f in fams:
        if f.form != "diag":
            out.append(f)
            continue
        keys = _diag_law_keys(f)
        norm = [frozenset((p, "sq0" if red == "sq" else red, g, i, c) for p, red, g, i, c in k) for k in keys]
        keep = [u for u, k in enumerate(norm) if k not in target]
        if len(keep) == len(norm):
            out.append(f)
        elif keep:
            for t in f.terms:
                t.index = t.index[keep]
            out.append(f)
    return out
