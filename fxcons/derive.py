"""derive: kernel vectors of the log-scale system -> law families.

A kernel vector ``w`` assigns a rate to every parameter unknown; the law is
``Σ rate · (squared norm of the slice that unknown scales)``. Laws with the same shape (same
parameters, reductions and coefficients, different unit indices) are grouped into one family.
"""
from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

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
    sol = A.sys.solve()
    var, slot, idx, slot_keys = _param_var_table(A)
    if var.size == 0:
        return []
    cls = sol.label[var]
    order = np.argsort(cls, kind="stable")
    cls_sorted = cls[order]
    bounds = np.flatnonzero(np.diff(cls_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(cls_sorted)]])
    members = {int(cls_sorted[s]): order[s:e] for s, e in zip(starts, ends)}
    kernel = sol.kernel(np.array(list(members.keys())))
    # input-side (column) unknowns u_in enter a weight's rate as −u_in
    in_red = {n: ("sq1" if pv.out_axis == 0 else "sq0") for n, pv in A.params.items() if pv.role == "matrix"}
    slot_sign = [-1 if in_red.get(n) == red else 1 for n, red, _ in slot_keys]
    # law = list of (slot, index, coef)
    groups: dict[tuple, list[list[tuple[int, int, Fraction]]]] = defaultdict(list)
    for kv in kernel:
        terms = []
        for c, coef in zip(kv.classes.tolist(), kv.coefs):
            m = members.get(c)
            if m is None:
                continue
            for s, i in zip(slot[m].tolist(), idx[m].tolist()):
                terms.append((s, i, coef * slot_sign[s]))
        if not terms:
            continue
        terms.sort(key=lambda t: (t[0], float(t[2]), t[1]))
        sig = (kv.eps, tuple((s, c) for s, _, c in terms))
        groups[sig].append(terms)
    fams = []
    for (eps, sig), laws in groups.items():
        laws.sort(key=lambda law: law[0][1])
        terms: list[Term] = []
        # consecutive entries of the signature with the same (slot, coef) form one term
        k = 0
        while k < len(sig):
            j = k
            while j < len(sig) and sig[j] == sig[k]:
                j += 1
            s, coef = sig[k]
            name, red, g = slot_keys[s]
            index = np.array([[law[q][1] for q in range(k, j)] for law in laws], dtype=np.int64)
            terms.append(Term(name, red, float(coef), index, groups=g))
            k = j
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
