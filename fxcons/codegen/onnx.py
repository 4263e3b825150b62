"""ONNX emitter: ``write_onnx(laws, path)`` -> a model whose inputs are parameters, outputs law values.

Built directly with ``onnx.helper`` (no exporter), default opset 18, and computing the math of
:meth:`LawFamily.evaluate` op by op:

* diag / linear terms: ``Mul(θ, θ)`` (diag) then a reducer (``Reshape`` + ``ReduceSum``), then the
  term's index (nothing, a ``Slice``, or ``Gather`` + ``ReduceSum`` over k), times ``coef``;
* gram terms: ``Transpose`` (the term's axis first), ``Gather`` of the block rows, ``Reshape`` to
  (blocks, r, rest), ``MatMul`` with its transpose; the upper triangle is a ``Gather`` on the
  flattened (blocks, r·r) matrix.

Precision: inputs and outputs have ``dtype`` (float32 by default); the sums are accumulated in
float64 (``accumulate="float64"``: a ``Cast`` after every input and before every output), since
a law is a difference of large sums of squares and onnxruntime's float32 ``ReduceSum`` loses
~1e-6 of the mass on ResNet-sized layers. ``accumulate=None`` computes in ``dtype``.

Values graph (``drift=False``): one input per parameter (its qualified name, shape from
``laws.param_shapes``), one output per family, shape ``[count]``.

Drift graph (``drift=True``): inputs ``before.<name>`` and ``after.<name>``; per family the
scalar ``max |h(after) − h(before)| / max(mass(before), mass(after), 1e-6 · mean mass(before))``
(mass and floor as in the generated Python's ``drift``: the law with |coef|, of |θ| for linear
laws, ``sqrt(D_a D_b)`` for matrix entries), plus the scalar ``max_drift`` over all families.

Output names are the family names made into identifiers; ``metadata_props`` holds
``fxcons.outputs`` (JSON ``{output name: family name}``) and ``fxcons.families`` (JSON list of
``{output, name, kind, exactness, form, count}``).
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ..errors import FxconsError
from ..lawset import LawFamily, LawSet, reduce_tensor
from ..serialize import atomic_write, index_pattern

OPSET = 18
IR_VERSION = 10  # onnxruntime >= 1.20 reads it
MASS_FLOOR = 1e-30
from .python import DRIFT_FLOOR  # noqa: E402  (one definition of the relative drift)


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise FxconsError("the ONNX emitter needs the 'onnx' package: pip install 'fxcons[onnx]'") from None
    return onnx, TensorProto, helper, numpy_helper


def _elem_type(dtype: Any) -> tuple[int, np.dtype]:
    """(TensorProto element type, numpy dtype) for a torch/numpy dtype or a name; default float32."""
    _, TensorProto, _, _ = _onnx()
    name = "float32" if dtype is None else str(dtype).replace("torch.", "")
    table = {"float32": (TensorProto.FLOAT, np.float32), "float": (TensorProto.FLOAT, np.float32),
             "float64": (TensorProto.DOUBLE, np.float64), "double": (TensorProto.DOUBLE, np.float64),
             "float16": (TensorProto.FLOAT16, np.float16), "half": (TensorProto.FLOAT16, np.float16)}
    if name not in table:
        raise FxconsError(f"unsupported ONNX dtype {dtype!r}: use float32, float64 or float16")
    et, nd = table[name]
    return et, np.dtype(nd)


def output_names(laws: LawSet, reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """Family name -> a unique valid identifier (ASCII letters, digits, underscores)."""
    used = set(reserved)
    out = {}
    for f in laws.families:
        base = re.sub(r"[^0-9A-Za-z_]+", "_", f.name).strip("_") or "family"
        if base[0].isdigit():
            base = "f_" + base
        name, i = base, 2
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        out[f.name] = name
    return out


class _Graph:
    """A tiny builder: nodes, deduplicated constant initializers, fresh names."""

    def __init__(self, elem: int, np_dtype: np.dtype) -> None:
        _, self.TP, self.helper, self.nph = _onnx()
        self.elem, self.np_dtype = elem, np_dtype
        self.nodes: list = []
        self.inits: list = []
        self._consts: dict[tuple, str] = {}
        self._n = 0
        self.memo: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def const(self, value: Any, int64: bool = False) -> str:
        arr = np.asarray(value, dtype=np.int64 if int64 else self.np_dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh("idx" if int64 else "c")
            self.inits.append(self.nph.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), int64=True)

    # ------------------------------------------------------------------ tensor helpers
    def reshape(self, x: str, *shape: int) -> str:
        return self.op("Reshape", [x, self.ints(*shape)])

    def reduce_sum(self, x: str, axes: list[int] | None, keepdims: int = 0) -> str:
        ins = [x] if axes is None else [x, self.ints(*axes)]
        return self.op("ReduceSum", ins, keepdims=keepdims)

    def scale(self, x: str, c: float) -> str:
        return x if c == 1.0 else self.op("Mul", [x, self.const(c)])


class _Family:
    """ONNX ops for one family's values and masses, on parameter tensors named by ``inp``."""

    def __init__(self, g: _Graph, laws: LawSet, inp: dict[str, str]) -> None:
        self.g, self.laws, self.inp = g, laws, inp

    def elem(self, param: str, how: str) -> str:
        """θ, θ² or |θ| of a parameter (computed once per graph)."""
        key = ("elem", self.inp[param], how)
        if key not in self.g.memo:
            x = self.inp[param]
            self.g.memo[key] = x if how == "id" else self.g.op("Mul", [x, x]) if how == "sq" else self.g.op("Abs", [x])
        return self.g.memo[key]

    def reduced(self, t, how: str) -> str:
        """reduce_tensor(elem(θ), reducer, groups), flattened (memoised)."""
        key = ("red", self.inp[t.param], how, t.reducer, t.groups)
        if key in self.g.memo:
            return self.g.memo[key]
        g, x = self.g, self.elem(t.param, how)
        shape = tuple(self.laws.param_shapes[t.param])
        r = t.reducer
        if r == "sq0":
            out = g.reduce_sum(g.reshape(x, shape[0], -1), [1])
        elif r == "sq1":
            q = g.reduce_sum(g.reshape(x, shape[0], shape[1], -1), [2])  # (out, in per group)
            if t.groups == 1:
                out = g.reduce_sum(q, [0])
            else:
                q = g.reduce_sum(g.reshape(q, t.groups, shape[0] // t.groups, shape[1]), [1])
                out = g.reshape(q, -1)
        elif r in ("sq", "entry"):
            out = g.reshape(x, -1)
        elif r in ("sum0", "sum1", "sumlast"):
            axis = {"sum0": 0, "sum1": 1, "sumlast": len(shape) - 1}[r]
            out = g.reshape(g.reduce_sum(x, [axis]), -1)
        elif r == "total":
            out = g.reshape(g.reduce_sum(x, None), 1)
        else:
            raise FxconsError(f"unknown reducer '{r}' on '{t.param}'")
        self.g.memo[key] = out
        return out

    def selected(self, t, how: str) -> str:
        """(count,): Σ_k R[index[u, k]] for the term."""
        g, R = self.g, self.reduced(t, how)
        idx = np.asarray(t.index, dtype=np.int64)
        n, k = idx.shape
        size = _reduced_size(tuple(self.laws.param_shapes[t.param]), t.reducer, t.groups)
        pat = index_pattern(idx)
        if pat is not None and k == 1 and pat[1] > 0:
            s, a, _ = pat
            if s == 0 and a == 1 and n == size:
                return R
            return g.op("Slice", [R, g.ints(s), g.ints(s + a * (n - 1) + 1), g.ints(0), g.ints(a)])
        if k == 1:
            return g.op("Gather", [R, g.const(idx[:, 0], int64=True)], axis=0)
        return g.reduce_sum(g.op("Gather", [R, g.const(idx, int64=True)], axis=0), [1])

    def rows(self, t) -> str:
        """(blocks, r, rest): rows index[u] of θ with the term's axis moved first."""
        g, x = self.g, self.inp[t.param]
        nd = len(self.laws.param_shapes[t.param])
        if t.axis != 0:
            perm = [t.axis] + [i for i in range(nd) if i != t.axis]
            x = g.op("Transpose", [x], perm=perm)
        b, r = t.index.shape
        m = g.op("Gather", [x, g.const(t.index, int64=True)], axis=0)
        return g.reshape(m, b, r, -1)

    def values(self, f: LawFamily) -> str:
        """(count,) law values of the family."""
        g = self.g
        if f.form == "gram":
            H = None
            for t in f.terms:
                M = self.rows(t)
                G = g.op("MatMul", [M, g.op("Transpose", [M], perm=[0, 2, 1])])
                G = g.scale(G, float(t.coef))
                H = G if H is None else g.op("Add", [H, G])
            return self._triu(H, f)
        how = "sq" if f.form == "diag" else "id"
        total = None
        for t in f.terms:
            v = g.scale(self.selected(t, how), float(t.coef))
            total = v if total is None else g.op("Add", [total, v])
        return total

    def masses(self, f: LawFamily) -> str:
        """(count,) scale of every law (see the module docstring)."""
        g = self.g
        if f.form == "gram":
            D = None
            for t in f.terms:
                M = self.rows(t)
                d = g.scale(g.reduce_sum(g.op("Mul", [M, M]), [2]), abs(float(t.coef)))
                D = d if D is None else g.op("Add", [D, d])
            r = f.terms[0].index.shape[1]
            a, b = np.triu_indices(r)
            Da = g.op("Gather", [D, g.const(a, int64=True)], axis=1)
            Db = g.op("Gather", [D, g.const(b, int64=True)], axis=1)
            return g.reshape(g.op("Sqrt", [g.op("Mul", [Da, Db])]), -1)
        how = "sq" if f.form == "diag" else "abs"
        total = None
        for t in f.terms:
            v = g.scale(self.selected(t, how), abs(float(t.coef)))
            total = v if total is None else g.op("Add", [total, v])
        return total

    def _triu(self, H: str, f: LawFamily) -> str:
        g = self.g
        b, r = f.terms[0].index.shape
        a, c = np.triu_indices(r)
        flat = g.reshape(H, b, r * r)
        return g.reshape(g.op("Gather", [flat, g.const(a * r + c, int64=True)], axis=1), -1)


def _reduced_size(shape: tuple, reducer: str, groups: int) -> int:
    import torch

    return reduce_tensor(torch.empty(shape, device="meta"), reducer, groups).numel()


def build_onnx(laws: LawSet, drift: bool = False, dtype: Any = None, opset: int = OPSET,
               accumulate: Any = "float64"):
    """The ONNX ``ModelProto`` (see the module docstring); ``write_onnx`` saves it."""
    onnx, TP, helper, _ = _onnx()
    if opset < 18:
        raise FxconsError(f"the ONNX emitter needs opset 18 or later, got {opset}")
    elem, _ = _elem_type(dtype)
    acc_elem, np_dtype = _elem_type(dtype if accumulate is None else accumulate)
    missing = [p for p in laws.params() if p not in laws.param_shapes]
    if missing:
        raise FxconsError(f"parameter '{missing[0]}' has no shape in the law set (param_shapes)")
    g = _Graph(acc_elem, np_dtype)
    names = output_names(laws, reserved=("max_drift",) if drift else ())
    params = laws.params()
    prefixes = ("before.", "after.") if drift else ("",)
    inputs = [helper.make_tensor_value_info(pre + p, elem, list(laws.param_shapes[p]))
              for pre in prefixes for p in params]

    def internal(name: str) -> str:  # the input, cast to the accumulation type
        return name if acc_elem == elem else g.op("Cast", [name], hint="acc", to=acc_elem)

    def emit_output(value: str, name: str) -> None:
        if acc_elem == elem:
            g.nodes.append(helper.make_node("Identity", [value], [name]))
        else:
            g.nodes.append(helper.make_node("Cast", [value], [name], to=elem))

    outputs = []
    if not drift:
        em = _Family(g, laws, {p: internal(p) for p in params})
        for f in laws.families:
            emit_output(em.values(f), names[f.name])
            outputs.append(helper.make_tensor_value_info(names[f.name], elem, [f.count]))
    else:
        before = _Family(g, laws, {p: internal("before." + p) for p in params})
        after = _Family(g, laws, {p: internal("after." + p) for p in params})
        live = [f for f in laws.families if f.count]
        m0 = {f.name: before.masses(f) for f in live}
        floor = g.const(MASS_FLOOR)
        if live:
            every = g.op("Concat", list(m0.values()), axis=0) if len(live) > 1 else m0[live[0].name]
            mean = g.op("ReduceMean", [every], keepdims=0)
            floor = g.op("Max", [g.op("Mul", [mean, g.const(DRIFT_FLOOR)]), floor])
        per_family = []
        for f in laws.families:
            if f.count == 0:
                rel = g.const(0.0)
            else:
                d = g.op("Abs", [g.op("Sub", [after.values(f), before.values(f)])])
                m = g.op("Max", [m0[f.name], after.masses(f), floor])
                rel = g.op("ReduceMax", [g.op("Div", [d, m])], keepdims=0)
            emit_output(rel, names[f.name])
            outputs.append(helper.make_tensor_value_info(names[f.name], elem, []))
            per_family.append(rel)
        overall = g.op("Max", per_family) if per_family else g.const(0.0)
        emit_output(overall, "max_drift")
        outputs.append(helper.make_tensor_value_info("max_drift", elem, []))
    graph = helper.make_graph(g.nodes, "fxcons_drift" if drift else "fxcons_laws", inputs, outputs, g.inits)
    graph.doc_string = (f"fxcons conservation laws: {len(laws.families)} families, {laws.total} laws"
                        + (" (relative drift between two parameter points)" if drift else ""))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fxcons", producer_version=_version())
    model.ir_version = IR_VERSION
    fams = [{"output": names[f.name], "name": f.name, "kind": f.kind, "exactness": f.exactness,
             "form": f.form, "count": f.count} for f in laws.families]
    helper.set_model_props(model, {
        "fxcons.outputs": json.dumps({names[f.name]: f.name for f in laws.families}, ensure_ascii=False),
        "fxcons.families": json.dumps(fams, ensure_ascii=False),
        "fxcons.graph": "drift" if drift else "values",
        "fxcons.total_laws": str(laws.total),
        "fxcons.accumulate": helper.tensor_dtype_to_np_dtype(acc_elem).name,
    })
    return model


def _version() -> str:
    from .. import __version__

    return __version__


def write_onnx(laws: LawSet, path: str, drift: bool = False, dtype: Any = None,
               accumulate: Any = "float64") -> str:
    """Write the ONNX law checker to ``path`` atomically (temp file + ``os.replace``); returns path.

    Raises :class:`FxconsError` (one line) when the path cannot be written.
    """
    import os

    model = build_onnx(laws, drift=drift, dtype=dtype, accumulate=accumulate)
    path = os.fspath(path)
    atomic_write(path, model.SerializeToString(), what="ONNX model")
    return path


def family_of_output(model) -> dict[str, str]:
    """``{output name: family name}`` from a model written by :func:`write_onnx`."""
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get("fxcons.outputs", "{}"))


__all__ = ["write_onnx", "build_onnx", "output_names", "family_of_output", "OPSET"]
