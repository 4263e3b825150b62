"""sympy / LaTeX emitter: each law family as a formula over indexed parameter symbols.

``to_sympy(laws)`` returns ``{family name: formula}``; every parameter is a ``sympy.IndexedBase``
named by its qualified name (``IndexedBase("layer1.0.conv2.weight")``), and the formula is one of

* **per-unit expression** (diag / linear families whose index arrays are affine, the usual case):
  a ``sympy.Expr`` in the free index ``u = sympy.Idx("u", count)`` -- law ``u`` is
  ``expr.subs(u, value)``. Example, a ReLU unit between two Linear layers::

      Sum(fc1.weight[u, i1]**2, (i1, 0, 2)) + fc1.bias[u]**2 - Sum(fc2.weight[i0, u]**2, (i0, 0, 1))

* **per-block matrix law** (gram families with affine indices): an r×r ``sympy.Matrix`` in the
  free block index ``u``; the laws are its upper-triangular entries, row-major;
* **explicit list** (any family whose index arrays are not affine in ``u``): a
  ``sympy.Matrix`` column with one entry per law (gram: the r×r blocks stacked vertically).

Sums over the axes a reduction removes stay unevaluated (``sympy.Sum``), so ResNet-sized
models are cheap; ``.doit()`` after substituting ``u`` expands them.
``evaluate_sympy`` substitutes numbers and returns the law values (for checks, small models).
``to_latex(laws)`` renders a LaTeX document, one section per family.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import sympy as sp

from ..lawset import LawFamily, LawSet, Term
from ..serialize import index_pattern

U_NAME = "u"


# ----------------------------------------------------------------------------- building blocks
class _Ctx:
    """Symbols shared by one family's formula."""

    def __init__(self, laws: LawSet) -> None:
        self.laws = laws
        self.bases: dict[str, sp.IndexedBase] = {}

    def base(self, param: str) -> sp.IndexedBase:
        if param not in self.bases:
            self.bases[param] = sp.IndexedBase(param)
        return self.bases[param]

    def shape(self, param: str) -> tuple[int, ...]:
        shape = tuple(int(x) for x in self.laws.param_shapes.get(param, ()))
        return shape or (1,)  # a 0-d parameter is written as a 1-entry vector


def _axis_symbols(n: int, prefix: str = "i") -> list[sp.Symbol]:
    return [sp.Symbol(f"{prefix}{d}", integer=True, nonnegative=True) for d in range(n)]


def _unravel(j: sp.Expr, shape: tuple[int, ...]) -> list[sp.Expr]:
    """Multi-index of flat position ``j`` in a C-ordered array of ``shape``."""
    out = []
    for d in range(len(shape)):
        stride = int(np.prod(shape[d + 1:], dtype=np.int64))
        q = j if stride == 1 else sp.floor(j / stride)
        out.append(q if d == 0 else sp.Mod(q, shape[d]))
    return out


def _summed(body: sp.Expr, syms: list[sp.Symbol], shape: tuple[int, ...], axes: list[int]) -> sp.Expr:
    """Σ of ``body`` over ``axes`` of ``shape`` (axes of length 1 are set to 0, not summed)."""
    ones = {syms[a]: 0 for a in axes if shape[a] == 1}
    body = body.xreplace(ones) if ones else body
    limits = [(syms[a], 0, shape[a] - 1) for a in axes if shape[a] != 1]
    return sp.Sum(body, *limits) if limits else body


def reduced_entry(ctx: _Ctx, t: Term, j: sp.Expr, form: str) -> sp.Expr:
    """``R[j]`` of a diag/linear term: the reduced parameter at flat position ``j``."""
    W, shape = ctx.base(t.param), ctx.shape(t.param)
    nd = len(shape)
    i = _axis_symbols(nd)
    pw = 2 if form == "diag" else 1
    r = t.reducer
    if r == "sq0":
        return _summed(W[(j, *i[1:])] ** pw, i, shape, list(range(1, nd)))
    if r == "sq1":
        ipg, opg = shape[1], shape[0] // t.groups
        if t.groups == 1:
            return _summed(W[(i[0], j, *i[2:])] ** pw, i, shape, [0] + list(range(2, nd)))
        grp, col = sp.floor(j / ipg), sp.Mod(j, ipg)
        inner = _summed(W[(i[0], col, *i[2:])] ** pw, i, shape, list(range(2, nd)))
        return sp.Sum(inner, (i[0], grp * opg, grp * opg + opg - 1))
    if r in ("sq", "entry"):
        return W[tuple(_unravel(j, shape))] ** pw if nd > 1 else W[j] ** pw
    if r == "sum0":
        rest = _unravel(j, shape[1:]) if nd > 1 else []
        return _summed(W[(i[0], *rest)], i, shape, [0])
    if r == "sum1":
        rest = _unravel(j, shape[:1] + shape[2:])
        return _summed(W[(rest[0], i[1], *rest[1:])], i, shape, [1])
    if r == "sumlast":
        rest = _unravel(j, shape[:-1]) if nd > 1 else []
        return _summed(W[(*rest, i[nd - 1])], i, shape, [nd - 1])
    if r == "total":
        return _summed(W[tuple(i)] if nd > 1 else W[i[0]], i, shape, list(range(nd)))
    raise ValueError(f"unknown reducer {r}")


def _k_sum(ctx: _Ctx, t: Term, form: str, u: sp.Expr, pat: tuple[int, int, int]) -> sp.Expr:
    """Σ_k R[s + a·u + b·k] for an affine term."""
    s, a, b = pat
    K = t.index.shape[1]
    if K == 1:
        return reduced_entry(ctx, t, s + a * u, form)
    k = sp.Symbol("k", integer=True, nonnegative=True)
    return sp.Sum(reduced_entry(ctx, t, s + a * u + b * k, form), (k, 0, K - 1))


def _coef(c: float) -> sp.Expr:
    """Coefficients as exact rationals when they are (±1, 0.5, 2.5...), else floats."""
    from fractions import Fraction

    q = Fraction(c).limit_denominator(1000)
    return sp.Rational(q.numerator, q.denominator) if float(q) == c else sp.Float(c)


def _gram_entry(ctx: _Ctx, t: Term, ra: sp.Expr, rb: sp.Expr) -> sp.Expr:
    """Σ_rest θ[.., ra, ..] θ[.., rb, ..] with ``ra``/``rb`` at position ``axis``."""
    W, shape = ctx.base(t.param), ctx.shape(t.param)
    nd = len(shape)
    i = _axis_symbols(nd)
    rest = [d for d in range(nd) if d != t.axis]

    def at(row):
        idx = [row if d == t.axis else i[d] for d in range(nd)]
        return W[tuple(idx)] if nd > 1 else W[row]

    return _summed(at(ra) * at(rb), i, shape, rest)


# ----------------------------------------------------------------------------- families
def family_expr(laws: LawSet, f: LawFamily, ctx: _Ctx | None = None) -> sp.Expr | sp.Matrix:
    """The formula of one family (see the module docstring for the three shapes)."""
    ctx = ctx or _Ctx(laws)
    pats = [index_pattern(t.index) for t in f.terms]
    affine = all(p is not None for p in pats)
    if f.form == "gram":
        r = f.terms[0].index.shape[1]
        if affine:
            u = sp.Idx(U_NAME, f.blocks)
            rows = [[sum((_coef(t.coef) * _gram_entry(ctx, t, p[0] + p[1] * u + p[2] * a,
                                                      p[0] + p[1] * u + p[2] * b)
                          for t, p in zip(f.terms, pats)), sp.Integer(0)) for b in range(r)] for a in range(r)]
            return sp.Matrix(rows)
        blocks = []
        for blk in range(f.blocks):
            blocks.append(sp.Matrix(r, r, lambda a, b: sum(
                (_coef(t.coef) * _gram_entry(ctx, t, int(t.index[blk, a]), int(t.index[blk, b])) for t in f.terms),
                sp.Integer(0))))
        return sp.Matrix.vstack(*blocks)
    if affine:
        u = sp.Idx(U_NAME, f.count)
        return sum((_coef(t.coef) * _k_sum(ctx, t, f.form, u, p) for t, p in zip(f.terms, pats)), sp.Integer(0))
    entries = []
    for law in range(f.count):
        e = sp.Integer(0)
        for t in f.terms:
            e += _coef(t.coef) * sum((reduced_entry(ctx, t, int(j), f.form) for j in t.index[law]), sp.Integer(0))
        entries.append(e)
    return sp.Matrix(entries)


def to_sympy(laws: LawSet) -> dict[str, sp.Expr | sp.Matrix]:
    """``{family name: formula}`` over ``IndexedBase`` symbols named after the parameters."""
    ctx = _Ctx(laws)
    return {f.name: family_expr(laws, f, ctx) for f in laws.families}


def unit_symbol(expr: Any) -> sp.Idx | None:
    """The free unit/block index ``u`` of a formula (None for explicit lists, and for per-unit
    formulas whose every term is the same for all units, such as ``Σ θ``)."""
    for s in expr.free_symbols:
        if isinstance(s, sp.Idx) and s.name == U_NAME:
            return s
    return None


# ----------------------------------------------------------------------------- numbers
def _numeric(expr: Any, values: Mapping[str, np.ndarray], env: dict | None = None) -> float:
    """Numeric value of a formula: ``Sum`` as loops, ``Indexed`` looked up in ``values``.

    Equivalent to ``expr.doit().xreplace({θ[i]: value})`` and much faster than sympy's ``doit``.
    """
    env = env or {}
    if isinstance(expr, sp.Sum):
        limits = [(v, lo, hi) for v, lo, hi in expr.limits]

        def loop(n: int, env: dict) -> float:
            if n == len(limits):
                return _numeric(expr.function, values, env)
            v, lo, hi = limits[n]
            a, b = int(_numeric(lo, values, env)), int(_numeric(hi, values, env))
            return sum((loop(n + 1, {**env, v: q}) for q in range(a, b + 1)), 0.0)

        return loop(0, env)
    if isinstance(expr, sp.Indexed):
        idx = tuple(int(_numeric(i, values, env)) for i in expr.indices)
        return float(values[str(expr.base.label)][idx])
    if isinstance(expr, (sp.Symbol, sp.Idx)):
        if expr in env:
            return env[expr]
        raise ValueError(f"free symbol {expr} has no value")
    if expr.is_Number:
        return int(expr) if expr.is_Integer else float(expr)
    args = [_numeric(a, values, env) for a in expr.args]
    if isinstance(expr, sp.Add):
        return sum(args[1:], args[0])
    if isinstance(expr, sp.Mul):
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if isinstance(expr, sp.Pow):
        return args[0] ** args[1]
    if isinstance(expr, sp.floor):
        return int(np.floor(args[0]))
    if isinstance(expr, sp.Mod):
        return args[0] % args[1]
    raise TypeError(f"cannot evaluate {type(expr).__name__} numerically")


def evaluate_sympy(laws: LawSet, exprs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Law values from the formulas by substitution (slow: meant for small models and tests)."""
    values = {}
    for k, v in params.items():
        a = v.detach().cpu().double().numpy() if hasattr(v, "detach") else np.asarray(v, dtype=np.float64)
        values[k] = a.reshape(1) if a.ndim == 0 else a
    out = {}
    for f in laws.families:
        e = exprs[f.name]
        u = unit_symbol(e)
        if f.form == "gram":
            r = f.terms[0].index.shape[1]
            iu = np.triu_indices(r)
            vals = []
            per_block = e.shape == (r, r)  # else r×r blocks stacked vertically
            for blk in range(f.blocks):
                H = e if per_block else e[blk * r:(blk + 1) * r, :]
                env = {u: blk} if u is not None else {}
                vals += [_numeric(H[a, b], values, env) for a, b in zip(*iu)]
            out[f.name] = np.array(vals)
        elif isinstance(e, sp.MatrixBase):  # explicit list
            out[f.name] = np.array([_numeric(x, values) for x in e], dtype=np.float64)
        else:  # per-unit expression (a term such as Σθ may not depend on u)
            env = (lambda j: {u: j}) if u is not None else (lambda j: {})
            out[f.name] = np.array([_numeric(e, values, env(j)) for j in range(f.count)], dtype=np.float64)
    return out


# ----------------------------------------------------------------------------- LaTeX
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "#": r"\#", "&": r"\&", "%": r"\%", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "→": r"$\rightarrow$", "∅": r"$\emptyset$", "×": r"$\times$", "Σ": r"$\Sigma$",
                "²": r"\textsuperscript{2}", "θ": r"$\theta$", "−": "-", "·": r"$\cdot$"}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text mode (ASCII only; unknown non-ASCII characters become '?')."""
    out = []
    for ch in text:
        if ch in _TEX_ESCAPES:
            out.append(_TEX_ESCAPES[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _latex(expr: Any, ctx: _Ctx) -> str:
    names = {b.label: r"\mathtt{" + tex_escape(p) + "}" for p, b in ctx.bases.items()}
    plain = {s: sp.Symbol(s.name, integer=True) for s in getattr(expr, "free_symbols", ()) if isinstance(s, sp.Idx)}
    expr = expr.xreplace(plain) if plain else expr
    return sp.latex(expr, symbol_names=names)


def _family_latex(laws: LawSet, f: LawFamily, ctx: _Ctx) -> list[str]:
    lines = [r"\section{" + tex_escape(f.name) + "}", r"\begin{itemize}"]
    indep = f.independent if f.independent is not None else f.count
    lines += [r"\item kind: " + tex_escape(f.kind) + ", form: " + tex_escape(f.form),
              r"\item exactness: " + ("exact" if f.exactness == "exact" else r"exact as the normalization $\epsilon \to 0$"),
              rf"\item laws: {f.count} (independent: {indep})",
              r"\item parameters: " + ", ".join(r"\texttt{" + tex_escape(p) + "}" for p in f.params)]
    if f.where:
        lines.append(r"\item where: " + tex_escape(f.where))
    if f.note:
        lines.append(r"\item note: " + tex_escape(f.note))
    lines.append(r"\end{itemize}")
    pats = [index_pattern(t.index) for t in f.terms]
    affine = all(p is not None for p in pats)
    if f.form == "gram":
        r = f.terms[0].index.shape[1]
        a, b = sp.Symbol("a", integer=True), sp.Symbol("b", integer=True)
        if affine:
            u = sp.Symbol(U_NAME, integer=True)
            terms = [_coef(t.coef) * _gram_entry(ctx, t, p[0] + p[1] * u + p[2] * a, p[0] + p[1] * u + p[2] * b)
                     for t, p in zip(f.terms, pats)]
            lines.append(r"Matrix law per block $u$, laws = entries $a \le b$ of $H_u$:")
            lines.append(_aligned(r"\left(H_{u}\right)_{a b}", terms, ctx))
            lines.append(rf"for $0 \le u < {f.blocks}$, $0 \le a \le b < {r}$.")
        else:
            H0 = sp.Matrix(r, r, lambda x, y: sum((_coef(t.coef) * _gram_entry(ctx, t, int(t.index[0, x]),
                                                                                 int(t.index[0, y])) for t in f.terms),
                                                  sp.Integer(0)))
            lines.append(rf"Matrix law per block (rows from an index table); block 0 of {f.blocks}:")
            lines.append(r"\[ H_0 = " + _latex(H0, ctx) + r" \]")
        return lines
    if affine:
        u = sp.Symbol(U_NAME, integer=True)
        terms = [_coef(t.coef) * _k_sum(ctx, t, f.form, u, p) for t, p in zip(f.terms, pats)]
        lines.append(_aligned("h_{u}", terms, ctx))
        lines.append(rf"for $0 \le u < {f.count}$.")
        return lines
    shown = min(f.count, 4)
    lines.append(rf"Explicit laws (first {shown} of {f.count}):")
    lines.append(r"\begin{align*}")
    expr = family_expr(laws, f, ctx)
    for law in range(shown):
        lines.append(rf"h_{{{law}}} &= {_latex(expr[law], ctx)} \\")
    lines.append(r"\end{align*}")
    return lines


def _aligned(lhs: str, terms: list[sp.Expr], ctx: _Ctx) -> str:
    """``lhs = t1 + t2 ...`` with one term per line."""
    rows = []
    for n, t in enumerate(terms):
        s = _latex(t, ctx)
        if n == 0:
            rows.append(f"{lhs} &= {s}")
        elif s.startswith("-"):
            rows.append(r"&\quad - " + s[1:].lstrip())
        else:
            rows.append(r"&\quad + " + s)
    return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"


def to_latex(laws: LawSet, title: str = "Conservation laws") -> str:
    """A standalone LaTeX document: a summary, then one section per family."""
    from .. import __version__

    ctx = _Ctx(laws)
    by_kind = {k: v for k, v in laws.by_kind().items() if v}
    lines = [r"\documentclass{article}", r"\usepackage{amsmath,amssymb}", r"\usepackage[margin=2cm]{geometry}",
             r"\allowdisplaybreaks", r"\begin{document}", r"\section*{" + tex_escape(title) + "}",
             tex_escape(f"{len(laws.families)} families, {laws.total} scalar laws (fxcons {__version__}). "),
             "By kind: " + ", ".join(f"{tex_escape(k)} {v}" for k, v in by_kind.items()) + ".",
             r"Parameters are written $\mathtt{name}_{i_0 i_1 \dots}$ (PyTorch layout); "
             r"$u$ numbers the laws (units) of a family.", ""]
    for f in laws.families:
        lines += _family_latex(laws, f, ctx)
        lines.append("")
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


__all__ = ["to_sympy", "to_latex", "evaluate_sympy", "family_expr", "unit_symbol", "tex_escape"]
