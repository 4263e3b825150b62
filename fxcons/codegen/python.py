"""Standalone Python emitter: ``to_python(laws) -> str``, the source of a module that imports only torch.

The generated module has

* ``laws(params) -> {family: Tensor}``: the same names and values as :meth:`LawSet.evaluate`
  (same torch operations in the same order, so float64 results agree to the last bits);
* ``masses(params) -> {family: Tensor}``: the scale of every law -- the law with every
  coefficient replaced by its absolute value (linear laws: of ``|θ|``; matrix laws: entry
  (a, b) gets ``sqrt(D_a·D_b)`` with ``D`` the diagonal of that absolute-coefficient Gram);
* ``drift(before, after) -> {family: Tensor}``: per family ``max |h(after) − h(before)| /
  max(mass(before), mass(after), 1e-6 · mean mass(before))`` (:data:`DRIFT_FLOOR`: a law that
  starts at zero, like the key bias of a zero-initialised attention, would otherwise divide
  rounding noise by zero);
* ``check_params(params)``: the one-line errors of :meth:`LawSet.check_params`, same wording;
* a command line: ``python laws_x.py checkpoint.pt [--json]``.

Index arrays are written compactly: slices when a law reads a contiguous (or strided) range of a
reduced parameter, ``torch.arange`` expressions for other affine patterns, literal lists otherwise.
"""
from __future__ import annotations

import numpy as np

from ..lawset import LawFamily, LawSet
from ..serialize import index_pattern

_DIAG_HELPERS = {
    "sq0": '''def _sq0(x: Tensor) -> Tensor:
    """Σ x² over every axis but the first: one value per row (output unit)."""
    return x.square().reshape(x.shape[0], -1).sum(1)
''',
    "sq1": '''def _sq1(x: Tensor, groups: int = 1) -> Tensor:
    """Σ x² per input column; grouped convs: per group and column (the group's own rows)."""
    q = x.square().reshape(x.shape[0], x.shape[1], -1).sum(2)
    return q.reshape(groups, q.shape[0] // groups, q.shape[1]).sum(1).reshape(-1)
''',
    "sq": '''def _sq(x: Tensor) -> Tensor:
    """x² entrywise, flattened."""
    return x.square().reshape(-1)
''',
}

_LINEAR_HELPERS = {
    "entry": '''def _entry(x: Tensor) -> Tensor:
    """x entrywise, flattened."""
    return x.reshape(-1)
''',
    "sum0": '''def _sum0(x: Tensor) -> Tensor:
    """x summed over axis 0 (e.g. a weight's column sums), flattened."""
    return x.sum(0).reshape(-1)
''',
    "sum1": '''def _sum1(x: Tensor) -> Tensor:
    """x summed over axis 1, flattened."""
    return x.sum(1).reshape(-1)
''',
    "sumlast": '''def _sumlast(x: Tensor) -> Tensor:
    """x summed over its last axis (e.g. an embedding table's row sums), flattened."""
    return x.sum(-1).reshape(-1)
''',
    "total": '''def _total(x: Tensor) -> Tensor:
    """Σ x, as a 1-element tensor."""
    return x.sum().reshape(1)
''',
}

_TAKE = '''def _take(r: Tensor, index: Tensor) -> Tensor:
    """Law u sums r[index[u, k]] over k."""
    return r[index.to(r.device)].sum(-1)
'''

_GRAM = '''def _rows(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """(blocks, r, rest): rows index[u] of x with ``axis`` moved first, flattened."""
    m = torch.movedim(x, axis, 0)[index.to(x.device)]
    return m.reshape(index.shape[0], index.shape[1], -1)


def _gram(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """Per block u: M Mᵀ with M = _rows(x, axis, index)[u]."""
    m = _rows(x, axis, index)
    return m @ m.transpose(1, 2)


def _triu(h: Tensor) -> Tensor:
    """The laws of a matrix law: upper-triangular entries of every block, row-major."""
    r = h.shape[-1]
    iu = torch.triu_indices(r, r, device=h.device)
    return h[:, iu[0], iu[1]].reshape(-1)
'''

_GRAM_MASS = '''def _rownorms(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """(blocks, r): squared norms of the rows of _rows(x, axis, index)."""
    return _rows(x, axis, index).square().sum(-1)


def _triu_mass(d: Tensor) -> Tensor:
    """Scale of entry (a, b) of a matrix law whose |coef| Gram has diagonal d: sqrt(d_a d_b)."""
    r = d.shape[-1]
    iu = torch.triu_indices(r, r, device=d.device)
    return (d[:, iu[0]] * d[:, iu[1]]).sqrt().reshape(-1)
'''

_CHECK = '''def check_params(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every needed parameter present, with its shape and finite (the fxcons error messages)."""
    out = {}
    for name, shape in PARAM_SHAPES.items():
        if name not in params:
            raise ValueError(f"parameter '{name}' is missing from the state dict")
        t = params[name]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"parameter '{name}' is not a tensor ({type(t).__name__})")
        if tuple(t.shape) != shape:
            raise ValueError(f"parameter '{name}' has shape {tuple(t.shape)}, expected {shape}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"parameter '{name}' contains NaN or Inf")
        out[name] = t.detach()
    return out
'''

#: relative drift is measured against max(mass before, mass after, DRIFT_FLOOR × the mean law mass)
DRIFT_FLOOR = 1e-6

_DRIFT = f'''def drift(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per family: max over its laws of |h(after) − h(before)| / max(mass(before), mass(after),
    {DRIFT_FLOOR:g} · mean mass(before)) (0-d tensors). The floor keeps a law that starts at zero
    (a zero-initialised bias) from dividing rounding noise by zero."""
    h0, h1, m0, m1 = laws(before), laws(after), masses(before), masses(after)
    every = [m.reshape(-1) for m in m0.values() if m.numel()]
    floor = ({DRIFT_FLOOR:g} * torch.cat(every).mean()).clamp_min(1e-30) if every else torch.tensor(1e-30)
    out = {{}}
    for k in h0:
        r = (h1[k] - h0[k]).abs() / torch.maximum(torch.maximum(m0[k], m1[k]), floor)
        out[k] = r.max() if r.numel() else r.new_zeros(())
    return out
'''

_CLI = '''def _load_state_dict(path: str) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise ValueError(f"cannot read checkpoint '{path}': {e.strerror or e}") from None
    except Exception as e:  # not a torch.save file, or not loadable with weights_only=True
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot load checkpoint '{path}' ({type(e).__name__}: {first}); "
                         "expected a state dict saved with torch.save") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a state dict")
    return obj


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="Evaluate the conservation laws on a saved state dict.")
    ap.add_argument("checkpoint", help="torch.save'd state dict (or a dict with 'state_dict'/'model')")
    ap.add_argument("--json", action="store_true", help="print every law value as JSON")
    args = ap.parse_args(argv)
    try:
        state = _load_state_dict(args.checkpoint)
        params = {k: v.double() for k, v in check_params(state).items()}
    except Exception as e:  # one line, no traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    values = laws(params)
    summary = {}
    for name, h in values.items():
        info = FAMILIES[name]
        empty = h.numel() == 0
        summary[name] = {"kind": info["kind"], "exactness": info["exactness"], "count": h.numel(),
                         "max_abs": 0.0 if empty else h.abs().max().item(), "mean": 0.0 if empty else h.mean().item()}
    if args.json:
        for name, h in values.items():
            summary[name]["values"] = h.tolist()
        json.dump({"checkpoint": args.checkpoint, "total_laws": sum(h.numel() for h in values.values()),
                   "families": summary}, sys.stdout, ensure_ascii=False)
        print()
        return 0
    width = max([len(n) for n in summary] + [6])
    n_fam, n_laws = len(summary), sum(s["count"] for s in summary.values())
    print(f"{args.checkpoint}: {n_fam} famil{'y' if n_fam == 1 else 'ies'}, {n_laws} law{'' if n_laws == 1 else 's'}")
    print(f"{'family':<{width}}  {'kind':<12} {'exact':<5} {'count':>6} {'max |h|':>12} {'mean':>12}")
    for name, s in summary.items():
        print(f"{name:<{width}}  {s['kind']:<12} {s['exactness']:<5} {s['count']:>6} "
              f"{s['max_abs']:>12.5g} {s['mean']:>12.5g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


class _Emitter:
    def __init__(self, laws: LawSet) -> None:
        self.laws = laws
        self.helpers: set[str] = set()
        self.constants: dict[bytes, str] = {}
        self.constant_lines: list[str] = []

    # ----------------------------------------------------------------- index arrays
    def index_const(self, index: np.ndarray) -> str:
        """Name of a module-level constant holding ``index`` (deduplicated)."""
        index = np.asarray(index, dtype=np.int64)
        key = repr(index.shape).encode() + index.tobytes()
        if key in self.constants:
            return self.constants[key]
        name = f"IDX_{len(self.constants)}"
        self.constants[key] = name
        n, k = index.shape
        pat = index_pattern(index)
        if index.size == 0:
            expr = f"torch.zeros(({n}, {k}), dtype=torch.long)"
        elif pat is not None and pat[1] == k * pat[2] and pat[2] == 1:
            s = pat[0]
            rng = f"{s}, {s + n * k}" if s else f"{n * k}"
            expr = f"torch.arange({rng}).reshape({n}, {k})"
        elif pat is not None:
            expr = _affine_expr(*pat, n, k)
        elif k > 1 and all(index_pattern(row[None, :]) is not None and
                           (index_pattern(row[None, :])[2] == 1) for row in index):
            expr = f"torch.tensor({_wrap_list(index[:, 0].tolist(), 8)})[:, None] + torch.arange({k})"
        elif k == 1:
            expr = f"torch.tensor({_wrap_list(index[:, 0].tolist(), 8)})[:, None]"
        else:
            expr = f"torch.tensor({_wrap_list(index.tolist(), 8)})"
        self.constant_lines.append(f"{name} = {expr}")
        return name

    def select(self, expr: str, index: np.ndarray, size: int) -> str:
        """``expr`` (a reduced parameter of ``size`` entries) read at ``index`` and summed over k."""
        n, k = index.shape
        pat = index_pattern(index)
        if pat is not None and k == 1:
            s, a, _ = pat
            if s == 0 and a == 1 and n == size:
                return expr
            stop = s + a * (n - 1) + 1
            step = "" if a == 1 else f":{a}"
            if a > 0:
                return f"{expr}[{s}:{stop}{step}]"
        if pat is not None and pat[2] == 1 and pat[1] == k:
            s = pat[0]
            return f"{expr}[{s}:{s + n * k}].reshape({n}, {k}).sum(1)"
        self.helpers.add("take")
        return f"_take({expr}, {self.index_const(index)})"

    # ----------------------------------------------------------------- terms
    def reduced(self, fam: LawFamily, t, mass: bool) -> str:
        x = f"p[{t.param!r}]"
        if fam.form == "diag":
            self.helpers.add(t.reducer)
            return f"_{t.reducer}({x}, groups={t.groups})" if t.reducer == "sq1" and t.groups > 1 \
                else f"_{t.reducer}({x})"
        self.helpers.add(t.reducer)
        return f"_{t.reducer}({x}.abs())" if mass else f"_{t.reducer}({x})"

    def term_expr(self, fam: LawFamily, t, mass: bool) -> str:
        if fam.form == "gram":
            self.helpers.add("gram")
            if mass:
                self.helpers.add("gram_mass")
                return f"_rownorms(p[{t.param!r}], {t.axis}, {self.index_const(t.index)})"
            return f"_gram(p[{t.param!r}], {t.axis}, {self.index_const(t.index)})"
        shape = tuple(self.laws.param_shapes.get(t.param, ()))
        size = _reduced_size(shape, t.reducer, t.groups)
        return self.select(self.reduced(fam, t, mass), t.index, size)

    def combination(self, fam: LawFamily, mass: bool) -> str:
        """Σ coef · term, written with + / − and explicit magnitudes (1 omitted)."""
        pieces = []
        for i, t in enumerate(fam.terms):
            c = abs(t.coef) if mass else t.coef
            e = self.term_expr(fam, t, mass)
            mag = "" if abs(c) == 1.0 else f"{abs(c)!r} * "
            if i == 0:
                pieces.append(("-" if c < 0 else "") + mag + e)
            else:
                pieces.append(("- " if c < 0 else "+ ") + mag + e)
        if len(pieces) == 1:
            return pieces[0]
        return "(\n        " + "\n        ".join(pieces) + "\n    )"

    def family_block(self, fam: LawFamily, target: str, mass: bool) -> list[str]:
        comb = self.combination(fam, mass)
        lines = [f"    # {fam.kind}, {fam.exactness}, {fam.count} laws over {fam.where or ', '.join(fam.params)}"]
        if fam.form == "gram":
            if mass:
                lines.append(f"    d = {comb}")
                lines.append(f"    {target}[{fam.name!r}] = _triu_mass(d)")
            else:
                lines.append(f"    H = {comb}")
                lines.append(f"    {target}[{fam.name!r}] = _triu(H)")
        else:
            lines.append(f"    {target}[{fam.name!r}] = {comb}")
        return lines


def _affine_expr(s: int, a: int, b: int, n: int, k: int) -> str:
    """Python for the (n, k) array s + a·u + b·k, without zero or unit factors."""
    if (a == 0 or n == 1) and (b == 0 or k == 1):
        return f"torch.full(({n}, {k}), {s})"

    def lin(c: int, var: str) -> str:
        return var if c == 1 else f"-{var}" if c == -1 else f"{c} * {var}"

    parts = []
    if a != 0 and n > 1:
        parts.append(lin(a, f"torch.arange({n})") + ("[:, None]" if k > 1 else ""))
    if b != 0 and k > 1:
        parts.append(lin(b, f"torch.arange({k})"))
    terms = ([str(s)] if s else []) + parts
    expr = terms[0]
    for q in terms[1:]:
        expr += f" - {q[1:]}" if q.startswith("-") else f" + {q}"
    if k == 1:
        expr = f"({expr})[:, None]" if (n > 1 and a != 0) else f"{expr}.expand({n}, 1)"
    if b != 0 and k > 1 and not (a != 0 and n > 1):
        expr = f"({expr}).expand({n}, {k})"
    return expr


def _reduced_size(shape: tuple, reducer: str, groups: int) -> int:
    import torch

    from ..lawset import reduce_tensor

    try:
        return reduce_tensor(torch.empty(shape, device="meta"), reducer, groups).numel()
    except Exception:
        return -1


def _wrap_list(values: list, per_line: int) -> str:
    text = repr(values)
    if len(text) <= 80:
        return text
    if values and isinstance(values[0], list):
        inner = ",\n    ".join(repr(v) for v in values)
        return "[\n    " + inner + ",\n]"
    rows = [", ".join(str(v) for v in values[i:i + 16]) for i in range(0, len(values), 16)]
    return "[\n    " + ",\n    ".join(rows) + ",\n]"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _docstring(laws: LawSet, module_name: str) -> str:
    from .. import __version__

    rows = [(f.name, f.kind, f.exactness, f.form, str(f.count)) for f in laws.families]
    head = ("family", "kind", "exactness", "form", "laws")
    widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(5)]
    fmt = "    " + "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {:>" + str(widths[-1]) + "}"
    table = "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows]).rstrip()
    text = f'''Conservation laws of {module_name}: standalone checker generated by fxcons {__version__}.

Imports only torch. Entry points:

    laws(params)          -> {{family: law values}}   (params: {{qualified name: tensor}})
    masses(params)        -> {{family: scale of every law}}
    drift(before, after)  -> {{family: max |h(after) - h(before)| / max(mass before, mass after, floor)}}
    python {module_name}.py checkpoint.pt [--json]

{_plural(len(laws.families), "family", "families")}, {_plural(laws.total, "law", "laws")}:

{table}
'''
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def to_python(laws: LawSet, module_name: str = "laws") -> str:
    """Source of a standalone module (imports only torch) that evaluates ``laws``."""
    em = _Emitter(laws)
    law_lines: list[str] = []
    mass_lines: list[str] = []
    for fam in laws.families:
        law_lines += em.family_block(fam, "h", mass=False)
    for fam in laws.families:
        mass_lines += em.family_block(fam, "m", mass=True)

    out = ['"""' + _docstring(laws, module_name) + '"""', "import torch", "from torch import Tensor", "", ""]
    out.append("PARAM_SHAPES = {")
    for name in laws.params():
        shape = tuple(int(x) for x in laws.param_shapes.get(name, ()))
        out.append(f"    {name!r}: {shape!r},")
    out.append("}")
    out.append("")
    out.append("FAMILIES = {")
    for f in laws.families:
        out.append(f"    {f.name!r}: {{'kind': {f.kind!r}, 'exactness': {f.exactness!r}, "
                   f"'form': {f.form!r}, 'count': {f.count}}},")
    out.append("}")
    out.append("")
    if em.constant_lines:
        out.append("# index arrays: law u of a term reads positions IDX[u, :] of the reduced parameter")
        out += em.constant_lines
        out.append("")
    out.append("")
    for key in ("sq0", "sq1", "sq"):
        if key in em.helpers:
            out += [_DIAG_HELPERS[key], ""]
    for key in ("entry", "sum0", "sum1", "sumlast", "total"):
        if key in em.helpers:
            out += [_LINEAR_HELPERS[key], ""]
    if "take" in em.helpers:
        out += [_TAKE, ""]
    if "gram" in em.helpers:
        out += [_GRAM, ""]
    if "gram_mass" in em.helpers:
        out += [_GRAM_MASS, ""]
    out.append("def laws(params: dict[str, Tensor]) -> dict[str, Tensor]:")
    out.append('    """Every law value, one 1-D tensor per family (no input checks: see check_params)."""')
    out.append("    p = params")
    out.append("    h = {}")
    out += law_lines
    out.append("    return h")
    out += ["", ""]
    out.append("def masses(params: dict[str, Tensor]) -> dict[str, Tensor]:")
    out.append('    """Scale of every law: the same sums of squares (linear: of |θ|) with |coef|."""')
    out.append("    p = params")
    out.append("    m = {}")
    out += mass_lines
    out.append("    return m")
    out += ["", "", _DRIFT, "", _CHECK, "", _CLI]
    return "\n".join(out)


__all__ = ["to_python"]
