"""A sparse homogeneous linear system over log-scale unknowns, and its kernel.

Unknowns are integers; ``0`` is the constant zero. Most constraints are equalities ``a == b``
(an op passing a scale along), solved by connected components; the few general rows
(``Σ c_i x_i = 0``: products, powers, a parameter used at a second site) are solved per
connected component with exact rational arithmetic (sympy) when small.

The kernel splits into *exact* directions and *eps* directions: an eps direction moves an
unknown marked ``eps`` (the input scale of a normalization, exact only as eps -> 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


@dataclass
class KernelVector:
    """One basis vector of the kernel: coefficients on equality classes' member unknowns."""

    classes: np.ndarray  # class labels involved
    coefs: list  # Fraction or float per class
    eps: bool


class LinearSystem:
    def __init__(self) -> None:
        self.n = 1
        self._eq_a: list[np.ndarray] = []
        self._eq_b: list[np.ndarray] = []
        self._rows: list[dict[int, Fraction]] = []
        self._eps: list[np.ndarray] = []

    # ------------------------------------------------------------------ building
    def new(self, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        ids = np.arange(self.n, self.n + size, dtype=np.int64).reshape(shape)
        self.n += size
        return ids

    def eq(self, a: np.ndarray | int, b: np.ndarray | int) -> None:
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        self._eq_a.append(a.ravel().copy())
        self._eq_b.append(b.ravel().copy())

    def zero(self, a: np.ndarray | int) -> None:
        self.eq(a, 0)

    def mark_eps(self, a: np.ndarray) -> None:
        self._eps.append(np.asarray(a, dtype=np.int64).ravel().copy())

    def lin(self, terms: list[tuple[float, np.ndarray]]) -> None:
        """Σ coef·ids == 0, elementwise after broadcasting the id arrays."""
        coefs = [Fraction(c).limit_denominator(1 << 20) for c, _ in terms]
        coefs = [int(c) if c.denominator == 1 else c for c in coefs]  # ints: fast exact sums
        arrs = np.broadcast_arrays(*[np.asarray(t, dtype=np.int64) for _, t in terms])
        mat = np.stack([a.ravel() for a in arrs], axis=1)  # rows x k
        cvec = np.array([float(c) for c in coefs])
        nz = mat != 0
        cnt = nz.sum(1)
        # fast paths: rows that are plain equalities / zero-fixings
        two = cnt == 2
        if two.any():
            sub = mat[two]
            m = nz[two]
            idx = np.argsort(~m, axis=1, kind="stable")[:, :2]
            v = np.take_along_axis(sub, idx, 1)
            c = cvec[idx]
            is_eq = (np.abs(c[:, 0] + c[:, 1]) < 1e-12) & (v[:, 0] != v[:, 1])
            if is_eq.any():
                self.eq(v[is_eq, 0], v[is_eq, 1])
            rest = np.nonzero(two)[0][~is_eq]
        else:
            rest = np.zeros(0, dtype=np.int64)
        one = cnt == 1
        if one.any():
            sub = mat[one]
            self.zero(sub[sub != 0])
        general = np.concatenate([rest, np.nonzero(cnt > 2)[0]])
        for r in general:
            row: dict[int, Fraction] = {}
            for v, c in zip(mat[r].tolist(), coefs):
                if v:
                    row[v] = row.get(v, 0) + c
            row = {k: c for k, c in row.items() if c != 0}
            if row:
                self._rows.append(row)

    # ------------------------------------------------------------------ solving
    def solve(self) -> "Solution":
        n = self.n
        if self._eq_a:
            a = np.concatenate(self._eq_a)
            b = np.concatenate(self._eq_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        rows = [dict(r) for r in self._rows]
        label = _components(n, a, b)
        # reduce general rows to classes; absorb rows that are equalities or zero-fixings
        while True:
            zero_cls = label[0]
            new_a, new_b, keep = [], [], []
            for r in rows:
                red: dict[int, Fraction] = {}
                for v, c in r.items():
                    cl = int(label[v])
                    if cl == zero_cls:
                        continue
                    red[cl] = red.get(cl, Fraction(0)) + c
                red = {k: c for k, c in red.items() if c != 0}
                if not red:
                    continue
                if len(red) == 1:
                    (k,) = red
                    new_a.append(k)
                    new_b.append(zero_cls)
                    continue
                if len(red) == 2:
                    (k1, c1), (k2, c2) = red.items()
                    if c1 == -c2:
                        new_a.append(k1)
                        new_b.append(k2)
                        continue
                keep.append(red)
            if not new_a:
                break
            # merge classes and relabel
            rep = _class_representative(label)
            a = np.concatenate([a, rep[np.array(new_a)]])
            b = np.concatenate([b, rep[np.array(new_b)]])
            label = _components(n, a, b)
            rows = []
            for r in keep:  # r keyed by old labels: map back through representatives
                rows.append({int(rep[k]): c for k, c in r.items()})
        rows = keep
        eps_vars = np.unique(np.concatenate(self._eps)) if self._eps else np.zeros(0, dtype=np.int64)
        return Solution(label, rows, eps_vars)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    g = sp.coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(g, directed=False)
    return label


def _class_representative(label: np.ndarray) -> np.ndarray:
    """For each class label, one variable id belonging to it."""
    rep = np.zeros(label.max() + 1, dtype=np.int64)
    rep[label[::-1]] = np.arange(len(label))[::-1]
    return rep


class Solution:
    """The kernel of a :class:`LinearSystem`, as equality classes plus per-component bases."""

    def __init__(self, label: np.ndarray, rows: list[dict[int, Fraction]], eps_vars: np.ndarray) -> None:
        self.label = label
        self.zero_class = int(label[0])
        self.eps_classes = set(label[eps_vars].tolist()) if len(eps_vars) else set()
        self.rows = rows  # keyed by class labels

    def kernel(self, relevant_classes: np.ndarray) -> "Kernel":
        """A basis of the kernel, restricted to components that touch ``relevant_classes``.

        Most basis vectors are a single free equality class (coefficient 1); they stay arrays.
        Classes coupled by general rows get exact rational bases per connected component."""
        relevant = np.setdiff1d(np.unique(relevant_classes), [self.zero_class])
        row_classes = np.array(sorted({c for r in self.rows for c in r}), dtype=np.int64)
        singles = np.setdiff1d(relevant, row_classes)  # sorted
        general: list[KernelVector] = []
        if self.rows:
            general = self._coupled_kernel(set(relevant.tolist()))
        return Kernel(singles, np.isin(singles, np.array(sorted(self.eps_classes), dtype=np.int64)), general)

    def _coupled_kernel(self, relevant: set) -> list[KernelVector]:
        """Kernel vectors of the components of the general rows' coupling graph."""
        out: list[KernelVector] = []
        uses: dict[int, int] = {}
        for r in self.rows:
            for k in r:
                uses[k] = uses.get(k, 0) + 1
        rows = []
        for r in self.rows:
            # the common row ±x_a ± x_b = 0 alone in its component (e.g. a query row against
            # its key row): kernel (1, ∓1), no rational elimination needed
            if len(r) == 2:
                (a, ca), (b, cb) = sorted(r.items())
                if (uses[a] == uses[b] == 1 and abs(ca) == abs(cb) and a not in self.eps_classes
                        and b not in self.eps_classes):
                    if a in relevant or b in relevant:
                        out.append(KernelVector(np.array([a, b]), [1, -1 if ca == cb else 1], False))
                    continue
            rows.append(r)
        if not rows:
            return out
        cls = sorted({c for r in rows for c in r})
        pos = {c: i for i, c in enumerate(cls)}
        ra, rb = [], []
        for r in rows:
            ks = [pos[k] for k in r]
            ra += ks[:-1]
            rb += ks[1:]
        _, comp = connected_components(
            sp.coo_matrix((np.ones(len(ra)), (ra, rb)), shape=(len(cls), len(cls))), directed=False)
        by_comp: dict[int, list[int]] = {}
        for c, k in zip(cls, comp):
            by_comp.setdefault(int(k), []).append(c)
        rows_by_comp: dict[int, list[dict]] = {}
        for r in rows:
            rows_by_comp.setdefault(int(comp[pos[next(iter(r))]]), []).append(r)
        for k, members in by_comp.items():
            if not relevant.intersection(members):
                continue
            out.extend(_component_kernel(members, rows_by_comp[k], self.eps_classes))
        return out


@dataclass
class Kernel:
    """A kernel basis: ``singles[i]`` is the vector 1 on that one class (``single_eps[i]``: an
    eps direction); ``general`` holds the vectors of classes coupled by general rows."""

    singles: np.ndarray
    single_eps: np.ndarray
    general: list[KernelVector]

    def __len__(self) -> int:
        return len(self.singles) + len(self.general)

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat (vector, class, coefficient) triples in basis order, and each vector's eps flag."""
        n1 = len(self.singles)
        vec = [np.arange(n1, dtype=np.int64)]
        cls = [self.singles.astype(np.int64)]
        coef = [np.ones(n1)]
        for k, kv in enumerate(self.general):
            vec.append(np.full(len(kv.classes), n1 + k, dtype=np.int64))
            cls.append(np.asarray(kv.classes, dtype=np.int64))
            coef.append(np.array([float(c) for c in kv.coefs]))
        eps = np.concatenate([self.single_eps.astype(bool), np.array([kv.eps for kv in self.general], dtype=bool)])
        return np.concatenate(vec), np.concatenate(cls), np.concatenate(coef), eps


def _component_kernel(members: list[int], rows: list[dict], eps_classes: set) -> list[KernelVector]:
    idx = {c: i for i, c in enumerate(members)}
    n = len(members)
    M = {i: {idx[c]: v for c, v in r.items()} for i, r in enumerate(rows)}
    eps_cols = [idx[c] for c in members if c in eps_classes]
    if len(rows) == 1 and not eps_cols:  # one equation: its rref is the row over its pivot
        (row,) = M.values()
        p = min(row)
        return [_kv(members, {p: -row[f] / row[p], f: Fraction(1)}, False) for f in range(n) if f != p]
    full = _nullspace(M, n)
    if not full:
        return []
    if eps_cols:
        E = {len(rows) + i: {j: Fraction(1)} for i, j in enumerate(eps_cols)}
        exact = _nullspace({**M, **E}, n)
    else:
        exact = full
    out = [_kv(members, v, False) for v in exact]
    # extend the exact basis to the full kernel; the extra vectors are eps directions: the
    # full-kernel vectors whose columns are pivots of [exact | full] (greedy, left to right)
    if len(exact) < len(full):
        T: dict[int, dict[int, Fraction]] = {}
        for j, v in enumerate(exact + full):
            for i, x in v.items():
                T.setdefault(i, {})[j] = x
        _, pivots = _rref(T, len(exact) + len(full))
        out += [_kv(members, full[j - len(exact)], True) for j in pivots if j >= len(exact)]
    return out


def _rref(rows: dict[int, dict[int, Fraction]], ncols: int):
    """Exact reduced row echelon form of a sparse rational matrix (sympy's DomainMatrix)."""
    from sympy import QQ
    from sympy.polys.matrices import DomainMatrix

    dm = DomainMatrix({i: {j: QQ(v.numerator, v.denominator) for j, v in r.items() if v != 0}
                       for i, r in rows.items() if r}, (max(rows, default=-1) + 1, ncols), QQ)
    R, pivots = dm.rref()
    return R.to_sdm(), list(pivots)


def _nullspace(rows: dict[int, dict[int, Fraction]], ncols: int) -> list[dict[int, Fraction]]:
    """Kernel basis as sparse vectors, built like sympy's Matrix.nullspace: one vector per free
    column f with v[f] = 1 and v[pivot_i] = −R[i, f]."""
    R, pivots = _rref(rows, ncols)
    pivot_set = set(pivots)
    in_col: dict[int, list] = {}
    for i, pc in enumerate(pivots):
        for j, x in R.get(i, {}).items():
            if j not in pivot_set and x:
                in_col.setdefault(j, []).append((pc, Fraction(int(x.numerator), int(x.denominator))))
    basis = []
    for f in range(ncols):
        if f not in pivot_set:
            vec = {pc: -x for pc, x in in_col.get(f, [])}
            vec[f] = Fraction(1)
            basis.append(vec)
    return basis


def _kv(members: list[int], v, eps: bool) -> KernelVector:
    nz = [(members[i], Fraction(v[i])) for i in sorted(v) if v[i] != 0]
    # normalise: first coefficient positive and integer-friendly
    from math import lcm

    den = lcm(*[c.denominator for _, c in nz]) if nz else 1
    sign = 1 if nz and nz[0][1] > 0 else -1
    return KernelVector(np.array([c for c, _ in nz]), [c * den * sign for _, c in nz], eps)
