"""Canonical op view: many spellings of one op, one kind with a known algebraic behaviour.

``canonicalize(cap)`` writes ``node.meta["fxc"] = View(kind, ins, attrs, where)`` on every node
of the captured graph. ``ins`` holds fx nodes (tensor operands), :class:`ParamRef` (a
parameter, by canonical qualified name) or plain Python constants. Passes are tables keyed on
``kind``; a kind without a rule in a pass breaks that pass's symmetries ("unknown op").

Spellings covered: ``nn`` modules (leaf ``call_module``), ``torch.*`` / ``torch.nn.functional``
functions, ``operator`` functions, Tensor methods (in-place ones too) and aten overloads from
``torch.export``.
"""
from __future__ import annotations

import warnings

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .capture import Captured


@dataclass(frozen=True)
class ParamRef:
    name: str
    shape: tuple[int, ...] | None = field(default=None, compare=False)


@dataclass
class View:
    kind: str
    ins: list
    attrs: dict = field(default_factory=dict)
    where: str = ""


# ----------------------------------------------------------------------------- helpers

def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _ndim(v: Any) -> int | None:
    return v.dim() if isinstance(v, torch.Tensor) else None


def _val(x: Any) -> Any:
    return x.meta.get("val") if isinstance(x, fx.Node) else x


def _holds_tensor(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (list, tuple)):
        return any(_holds_tensor(y) for y in v)
    if isinstance(v, dict):
        return any(_holds_tensor(y) for y in v.values())
    return v is not None and not isinstance(v, (int, float, bool, str, torch.dtype, torch.device, torch.Size))


def _python_values_only(node: fx.Node) -> bool:
    """Neither the result nor any operand holds a tensor (ints, tuples, shapes)."""
    return not _holds_tensor(node.meta.get("val")) and not any(
        _holds_tensor(x.meta.get("val")) for x in node.all_input_nodes)


def _dims(d: Any, nd: int) -> list[int]:
    if d is None:
        return list(range(nd))
    if isinstance(d, int):
        d = [d]
    return sorted(int(x) % nd for x in d)


HOMOGENEOUS = {"relu", "relu_", "leaky_relu", "leaky_relu_"}
NON_HOMOGENEOUS = {
    "gelu", "silu", "silu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "softplus", "elu", "elu_",
    "mish", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "selu", "celu", "exp",
    "log", "sin", "cos", "erf", "logsigmoid", "softsign", "tanhshrink", "glu", "abs", "sign",
    "log1p", "expm1", "square_", "reciprocal",
}
CLAMPS = {"relu6", "hardtanh", "hardtanh_", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "threshold"}
IDENTITY = {
    "contiguous", "clone", "to", "float", "double", "half", "bfloat16", "type_as",
    "alias", "lift_fresh_copy", "_to_copy", "type", "cpu", "cuda", "requires_grad_",
    "dropout_identity", "identity", "_assert_tensor_metadata",
}
#: the value passes on but the gradient does not: laws are about the gradient autograd computes
STOP_GRADIENT = {"detach", "detach_", "stop_gradient"}
RESHAPES = {
    "view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_",
    "view_as", "reshape_as", "_unsafe_view", "ravel",
}
EXPANDS = {"expand", "expand_as", "broadcast_to"}
#: ops whose result has zero derivative in every tensor operand: sizes and shapes, tensors made
#: from a shape (``*_like``, ``arange``, ``zeros``), comparisons and other piecewise-constant
#: maps (boolean masks, floor division). Their output has scale 0 and carries no tangent;
#: anything that reads *values* differentiably (triu, tril, %, ...) is not here.
SHAPE_ONLY = {"size", "dim", "numel", "_assert", "sym_size", "sym_numel", "_assert_async",
              "sym_constrain_range_for_size", "_assert_scalar", "eq", "ne", "lt", "gt", "le", "ge",
              "scalar_tensor", "arange", "zeros", "ones", "full", "empty", "tensor", "ones_like",
              "zeros_like", "full_like", "empty_like", "new_ones", "new_zeros", "new_empty", "new_full",
              "floordiv", "and_", "or_", "not_", "logical_not", "logical_and", "logical_or",
              "__getattribute__"}
#: tensor attributes that are shapes / metadata (``x.shape``), and those that are values
SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout", "is_sparse"}
TRANSPOSE_ATTRS = {"T", "mT"}
POOLS = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "_adaptive_avg_pool2d",
}
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
NONHOMOG_MODULES = (
    nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ELU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.SELU, nn.CELU, nn.GLU, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink,
)
CLAMP_MODULES = (nn.ReLU6, nn.Hardtanh, nn.Threshold)


# ----------------------------------------------------------------------------- modules

def _module_view(cap: Captured, node: fx.Node, m: nn.Module) -> View:
    x = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    P = lambda p: _pref(cap, p)  # noqa: E731
    if isinstance(m, nn.Linear):
        return View("linear", [x, P(m.weight), P(m.bias)], {"layout": "out_in"})
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if m.padding_mode != "zeros":
            return View("unknown", [x], {"why": f"conv padding_mode={m.padding_mode!r}"})
        return View("conv", [x, P(m.weight), P(m.bias)], {"groups": m.groups, "padded": _padded(m.padding)})
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        training = m.training or not m.track_running_stats
        return View("batch_norm", [x, P(m.weight), P(m.bias)], {"training": training})
    if isinstance(m, nn.LayerNorm):
        return View("layer_norm", [x, P(m.weight), P(m.bias)], {"ndim": len(m.normalized_shape)})
    if hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm):
        return View("rms_norm", [x, P(m.weight)], {"ndim": len(m.normalized_shape)})
    if isinstance(m, nn.GroupNorm):
        return View("group_norm", [x, P(m.weight), P(m.bias)], {"groups": m.num_groups})
    if isinstance(m, nn.Embedding):
        return _embedding_view(x, P(m.weight), m.padding_idx, m.max_norm, m.scale_grad_by_freq)
    if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
        return View("homog", [x], {"fn": type(m).__name__})
    if isinstance(m, nn.PReLU):
        return View("homog", [x, P(m.weight)], {"fn": "PReLU"})
    if isinstance(m, nn.Identity):
        return View("identity", [x])
    if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return View("dropout", [x], {"active": m.training and m.p > 0, "p": m.p})
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return View("reshape", [x])
    if isinstance(m, POOL_MODULES):  # k: how many trailing (spatial) axes it pools over
        return View("pool", [x], {"fn": type(m).__name__, "k": int(type(m).__name__[-2])})
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return View("softmax", [x], {"dim": _softmax_dim(m.dim, _ndim(_val(x))), "log": isinstance(m, nn.LogSoftmax)})
    if isinstance(m, NONHOMOG_MODULES):
        return View("breaker", [x], {"why": f"{type(m).__name__} is not positively homogeneous"})
    if isinstance(m, CLAMP_MODULES):
        return View("breaker", [x], {"why": f"{type(m).__name__} clips (not positively homogeneous)"})
    if isinstance(m, nn.MultiheadAttention):
        return _mha_view(cap, node, m)
    return View("unknown", [x], {"why": f"no rule for module type {type(m).__module__}.{type(m).__name__}"})


def _padded(padding: Any) -> bool:
    """Does a convolution pad its input with zeros ('same' is counted as padding)?"""
    if isinstance(padding, str):
        return padding != "valid"
    if isinstance(padding, int):
        return padding != 0
    return any(int(p) != 0 for p in padding)


def _softmax_dim(dim: int | None, ndim: int | None) -> int:
    """``nn.Softmax()`` without ``dim``: PyTorch's legacy choice (0 for 0-, 1- and 3-d inputs)."""
    if dim is not None:
        return int(dim)
    return 0 if ndim in (0, 1, 3) else 1


def _embedding_view(idx: Any, weight: Any, padding_idx: Any, max_norm: Any, scale_grad_by_freq: bool) -> View:
    """A table lookup. ``max_norm`` renormalizes the looked-up rows *in place* during the forward
    (not scale-equivariant, and it moves θ outside the optimizer); ``scale_grad_by_freq`` makes
    the table's gradient differ from the gradient of the loss. Both have no rule."""
    if max_norm is not None:
        return View("unknown", [idx, weight], {"why": "embedding max_norm renormalizes rows in the forward"})
    if scale_grad_by_freq:
        return View("unknown", [idx, weight], {"why": "embedding scale_grad_by_freq rescales the table's gradient"})
    return View("embedding", [idx, weight], {"padding_idx": padding_idx})


def _mha_view(cap: Captured, node: fx.Node, m: nn.MultiheadAttention) -> View:
    """nn.MultiheadAttention: ins = [query, key, value, in_proj_weight, in_proj_bias,
    out_proj.weight, out_proj.bias]; masks (which only add to the logits) in ``attrs``."""
    names = ("query", "key", "value")
    qkv = [_arg(node, i, nm) for i, nm in enumerate(names)]
    masks = [_arg(node, 3, "key_padding_mask"), _arg(node, 5, "attn_mask")]
    P = lambda p: _pref(cap, p)  # noqa: E731
    why = None
    if not m._qkv_same_embed_dim:
        why = "MultiheadAttention with kdim/vdim != embed_dim (separate projections) has no rule"
    elif m.bias_k is not None or m.add_zero_attn:
        why = "MultiheadAttention with add_bias_kv / add_zero_attn has no rule"
    if why:
        params = [P(p) for p in m.parameters()]
        return View("unknown", qkv + params, {"why": why})
    ins = qkv + [P(m.in_proj_weight), P(m.in_proj_bias), P(m.out_proj.weight), P(m.out_proj.bias)]
    return View("mha", ins, {"heads": m.num_heads, "embed_dim": m.embed_dim,
                             "masks": [x for x in masks if isinstance(x, fx.Node)]})


def _param_ref(cap: Captured, name: str) -> ParamRef:
    info = cap.params.get(name)
    return ParamRef(name, info.shape if info is not None else None)


def _pref(cap: Captured, p: Any) -> Any:
    if p is None:
        return None
    name = cap.param_of_obj.get(id(p))
    return _param_ref(cap, name) if name is not None else None


# ----------------------------------------------------------------------------- functions

def _fn_name(target: Any) -> str | None:
    """Name of a known torch / functional / operator / aten callable, else None."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    name = getattr(target, "__name__", None)
    if name is None:
        return None
    for ns in (torch, F, operator, torch.Tensor, torch.special, torch._C._nn, torch.linalg):
        if getattr(ns, name, None) is target:
            return name
    if name == "scaled_dot_product_attention":
        return name
    if target is getattr:
        return "getattr"
    return None


def _function_view(cap: Captured, node: fx.Node, name: str) -> View:
    a = node.args
    x = a[0] if a else next(iter(node.kwargs.values()), None)
    out = node.meta.get("val")
    if name in ("linear",):
        return View("linear", [x, _arg(node, 1, "weight"), _arg(node, 2, "bias")], {"layout": "out_in"})
    if name in ("addmm",):  # beta·bias + alpha·x @ W (W stored in,out) -- Conv1D spelling
        return View("linear", [a[1], a[2], a[0]], {"layout": "in_out", "bias_scale": _arg(node, 3, "beta", 1)})
    if name in ("conv1d", "conv2d", "conv3d"):
        return View("conv", [x, _arg(node, 1, "weight"), _arg(node, 2, "bias")],
                    {"groups": _arg(node, 6, "groups", 1), "padded": _padded(_arg(node, 4, "padding", 0))})
    if name == "convolution":
        if a[6]:
            return View("unknown", [x], {"why": "transposed convolution has no rule"})
        return View("conv", [x, a[1], a[2]], {"groups": a[8], "padded": _padded(a[4])})
    if name == "batch_norm":
        training = _arg(node, 5, "training", False)
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            training = a[5]
            return View("batch_norm", [x, a[1], a[2]], {"training": bool(training)})
        return View("batch_norm", [x, _arg(node, 3, "weight"), _arg(node, 4, "bias")], {"training": bool(training)})
    if name in ("_native_batch_norm_legit_functional", "_native_batch_norm_legit", "native_batch_norm"):
        return View("batch_norm", [x, a[1], a[2]], {"training": bool(a[5])})
    if name == "layer_norm":
        ns = _arg(node, 1, "normalized_shape")
        return View("layer_norm", [x, _arg(node, 2, "weight"), _arg(node, 3, "bias")], {"ndim": len(ns)})
    if name == "rms_norm":
        ns = _arg(node, 1, "normalized_shape")
        return View("rms_norm", [x, _arg(node, 2, "weight")], {"ndim": len(ns)})
    if name == "group_norm":
        return View("group_norm", [x, _arg(node, 2, "weight"), _arg(node, 3, "bias")], {"groups": _arg(node, 1, "num_groups")})
    if name == "embedding":
        if isinstance(node.target, torch._ops.OpOverload):  # aten.embedding(weight, indices, padding_idx, scale_grad_by_freq)
            pad = a[2] if len(a) > 2 else node.kwargs.get("padding_idx", -1)
            freq = a[3] if len(a) > 3 else node.kwargs.get("scale_grad_by_freq", False)
            return _embedding_view(a[1], a[0], pad if pad is not None and pad >= 0 else None, None, bool(freq))
        w, pad = _arg(node, 1, "weight"), _arg(node, 2, "padding_idx")
        if isinstance(pad, int) and pad < 0:  # F.embedding counts a negative padding_idx from the end
            rows = _val(w).shape[0] if isinstance(_val(w), torch.Tensor) else None
            pad = pad + rows if rows is not None else pad
        return _embedding_view(x, w, pad, _arg(node, 3, "max_norm"), bool(_arg(node, 5, "scale_grad_by_freq", False)))
    if name in HOMOGENEOUS:
        return View("homog", [x], {"fn": name})
    if name in ("prelu", "_prelu_kernel"):  # the slope is an operand: it cannot scale
        return View("homog", [x, _arg(node, 1, "weight")], {"fn": name})
    if name in NON_HOMOGENEOUS:
        return View("breaker", [x], {"why": f"{name} is not positively homogeneous"})
    if name in CLAMPS:
        return View("breaker", [x], {"why": f"{name} clips (not positively homogeneous)"})
    if name in ("dropout", "dropout_", "feature_dropout", "dropout1d", "dropout2d", "dropout3d", "native_dropout"):
        p = _arg(node, 1, "p", 0.5)
        train = _arg(node, 2, "training", _arg(node, 2, "train", True))
        return View("dropout", [x], {"active": bool(train) and p > 0, "p": p})
    if name in IDENTITY:
        return View("identity", [x])
    if name in RESHAPES:
        return View("reshape", [x])
    if name in EXPANDS:
        return View("expand", [x])
    if name in ("permute",):
        perm = a[1:] if len(a) > 2 else _arg(node, 1, "dims")
        return View("permute", [x], {"perm": [int(p) for p in perm]})
    if name in ("transpose", "swapaxes", "swapdims"):
        nd = _ndim(_val(x))
        d0, d1 = int(_arg(node, 1, "dim0")) % nd, int(_arg(node, 2, "dim1")) % nd
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return View("permute", [x], {"perm": perm})
    if name in ("t", "numpy_T"):
        nd = _ndim(_val(x))
        return View("permute", [x], {"perm": list(range(nd))[::-1]})
    if name == "getitem":
        if isinstance(_val(x), torch.Tensor):
            return View("index", [x], {"index": a[1]})
        return View("pick", [x], {"i": a[1]})
    if name == "slice":
        idx = [slice(None)] * _ndim(_val(x))
        dim = _arg(node, 1, "dim", 0)
        idx[dim] = slice(_arg(node, 2, "start", None), _arg(node, 3, "end", None), _arg(node, 4, "step", 1))
        return View("index", [x], {"index": tuple(idx)})
    if name == "select":
        idx = [slice(None)] * _ndim(_val(x))
        idx[_arg(node, 1, "dim")] = _arg(node, 2, "index")
        return View("index", [x], {"index": tuple(idx)})
    if name == "narrow":
        idx = [slice(None)] * _ndim(_val(x))
        s = _arg(node, 2, "start")
        idx[_arg(node, 1, "dim")] = slice(s, s + _arg(node, 3, "length"))
        return View("index", [x], {"index": tuple(idx)})
    if name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "split_copy", "unsafe_split"):
        nd = _ndim(_val(x))
        dim = _arg(node, 2 if name != "unbind" else 1, "dim", 0) or 0
        return View("split", [x], {"dim": int(dim) % nd, "squeeze": name == "unbind"})
    if name in ("cat", "concat", "concatenate", "stack") and not isinstance(_arg(node, 0, "tensors"), (list, tuple)):
        return View("unknown", [_arg(node, 0, "tensors")], {"why": f"{name} of a list built at run time"})
    if name in ("cat", "concat", "concatenate"):
        t = list(a[0])
        nd = _ndim(_val(t[0]))
        return View("cat", t, {"dim": int(_arg(node, 1, "dim", 0)) % nd})
    if name == "stack":
        t = list(a[0])
        nd = _ndim(out)
        return View("stack", t, {"dim": int(_arg(node, 1, "dim", 0)) % nd})
    lhs, rhs = _arg(node, 0, "input"), _arg(node, 1, "other")  # torch.add(input=x, other=y) too
    if name in ARITHMETIC and any(_is_container(v) for v in (lhs, rhs)):
        # Python list arithmetic traced by fx ([t] * x.shape[0], l1 + l2): not a tensor op
        return View("unknown", list(node.all_input_nodes), {"why": f"{name} of a Python list or tuple"})
    if name in ("add", "add_", "iadd", "__add__", "__radd__"):
        alpha = node.kwargs.get("alpha", 1)
        return View("add", [lhs, rhs], {"alpha": alpha})
    if name in ("sub", "sub_", "isub", "__sub__", "rsub"):
        if name == "rsub":  # rsub(input, other, alpha) = other − alpha·input
            return View("add", [rhs, lhs], {"alpha": -1 * node.kwargs.get("alpha", 1)})
        return View("add", [lhs, rhs], {"alpha": -1 * node.kwargs.get("alpha", 1)})
    if name in ("mul", "mul_", "imul", "__mul__", "__rmul__", "multiply"):
        return View("mul", [lhs, rhs])
    if name in ("truediv", "div", "div_", "itruediv", "__truediv__", "divide"):
        if node.kwargs.get("rounding_mode") or (len(a) > 2 and a[2]):
            return View("breaker", [lhs, rhs], {"why": "rounding division"})
        return View("div", [lhs, rhs])
    if name in ("neg", "neg_", "__neg__"):
        return View("mul", [x, -1.0])
    if name in ("mean", "sum", "amax", "amin", "nansum", "nanmean"):
        nd = _ndim(_val(x))
        dims = _arg(node, 1, "dim", None)
        keep = bool(_arg(node, 2, "keepdim", False))
        return View("reduce", [x], {"dims": _dims(dims, nd), "keepdim": keep, "fn": name})
    if name in ("max", "min") and isinstance(_val(x), torch.Tensor) and len(a) == 1 and not node.kwargs:
        return View("reduce", [x], {"dims": list(range(_ndim(_val(x)))), "keepdim": False, "fn": name})
    if name in POOLS:
        nd = _ndim(_val(x))
        k = int(name[-2]) if name[-2].isdigit() else 2
        if "with_indices" in name:
            k = int(name.split("_pool")[1][0])
        return View("pool", [x], {"fn": name, "k": k})
    if name in ("softmax", "log_softmax", "_softmax", "_log_softmax", "safe_softmax", "_safe_softmax"):
        return View("softmax", [x], {"dim": _softmax_dim(_arg(node, 1, "dim"), _ndim(_val(x))), "log": "log" in name})
    if name in ("matmul", "bmm", "mm", "__matmul__"):
        return View("matmul", [a[0], a[1]])
    if name == "einsum":
        ops = list(a[1]) if len(a) >= 2 and isinstance(a[1], (list, tuple)) else list(a[1:])
        return View("einsum", ops, {"eq": a[0]})
    if name == "scaled_dot_product_attention":
        return View("sdpa", [a[0], a[1], a[2], _arg(node, 3, "attn_mask")],
                    {"is_causal": _arg(node, 5, "is_causal", False), "scale": node.kwargs.get("scale"),
                     "dropout_p": _arg(node, 4, "dropout_p", 0.0), "enable_gqa": node.kwargs.get("enable_gqa", False)})
    if name in ("pow", "pow_", "__pow__"):
        e = _arg(node, 1, "exponent")
        if isinstance(e, (int, float)):
            return View("power", [x], {"p": float(e)})
        return View("breaker", [x], {"why": "pow with a tensor exponent"})
    if name in ("sqrt",):
        return View("power", [x], {"p": 0.5})
    if name in ("rsqrt",):
        return View("power", [x], {"p": -0.5})
    if name in ("square",):
        return View("power", [x], {"p": 2.0})
    if name in ("masked_fill", "masked_fill_", "where"):
        return View("unknown", [x], {"why": f"{name} (masking with a value breaks rescaling)"})
    if name in STOP_GRADIENT:
        return View("breaker", [x], {"why": f"{name} stops the gradient (laws are about the gradient autograd computes)"})
    if name in SHAPE_ONLY:
        return View("meta", list(a))
    return View("unknown", [x], {"why": f"no rule for {name}"})


# ----------------------------------------------------------------------------- entry point

#: elementwise arithmetic spellings (their operands must be tensors or numbers)
ARITHMETIC = {"add", "add_", "iadd", "__add__", "__radd__", "sub", "sub_", "isub", "__sub__", "rsub", "mul", "mul_",
              "imul", "__mul__", "__rmul__", "multiply", "truediv", "div", "div_", "itruediv", "__truediv__", "divide"}


def _is_container(v: Any) -> bool:
    """A Python list / tuple, literal or produced by a node (its value is one)."""
    return isinstance(v, (list, tuple)) or (isinstance(v, fx.Node) and isinstance(v.meta.get("val"), (list, tuple)))


def canonicalize(cap: Captured) -> None:
    """Attach a :class:`View` to every node of ``cap.gm`` (``node.meta['fxc']``)."""
    gm = cap.gm
    for node in gm.graph.nodes:
        try:
            view = _view(cap, node)
        except Exception as e:  # noqa: BLE001 - a spelling no rule foresaw: stop symmetries, never crash
            warnings.warn(f"fxcons: node {node.name} ({node.target}) could not be read ({type(e).__name__}: {e}); "
                          "it breaks every symmetry through it", stacklevel=2)
            view = View("unknown", list(node.all_input_nodes), {"why": f"could not be read: {type(e).__name__}"})
        if view.kind not in ("param", "input", "const", "output", "meta") and _python_values_only(node):
            view = View("meta", list(node.args))  # shape arithmetic: (x.shape[0],) + (1,) * (x.ndim - 1)
        node.meta["fxc"] = view
        if view.kind in ("unknown", "breaker"):  # every tensor operand is stopped, not just the first
            view.ins = list(view.ins) + [x for x in node.all_input_nodes if not any(x is y for y in view.ins)]
        view.where = _where(cap, node)
        # parameters used by this node
        for i, x in enumerate(view.ins):
            if isinstance(x, fx.Node) and x in cap.param_nodes:
                view.ins[i] = _param_ref(cap, cap.param_nodes[x])
        for x in view.ins:
            if isinstance(x, ParamRef):
                cap.sites.setdefault(x.name, []).append(node.name)


def _view(cap: Captured, node: fx.Node) -> View:
    if node.op == "placeholder":
        if node in cap.param_nodes:
            return View("param", [_param_ref(cap, cap.param_nodes[node])])
        return View("input", [])
    if node.op == "get_attr":
        if node in cap.param_nodes:
            return View("param", [_param_ref(cap, cap.param_nodes[node])])
        return View("const", [])
    if node.op == "output":
        return View("output", [node.args[0]])
    if node.op == "call_module":
        return _module_view(cap, node, cap.gm.get_submodule(node.target))
    if node.op == "call_method":
        name = node.target
        return _function_view(cap, node, name)
    name = _fn_name(node.target)
    if name is None:
        return View("unknown", list(node.args[:1]), {"why": f"no rule for function {getattr(node.target, '__qualname__', node.target)}"})
    if name == "getattr":
        return _attribute_view(node)
    return _function_view(cap, node, name)


def _attribute_view(node: fx.Node) -> View:
    """``x.shape`` and other metadata, ``x.T`` / ``x.mT`` (transposes); any other attribute
    (``x.data``, ``x.real``...) has no rule."""
    x, attr = node.args[0], node.args[1]
    if attr in SHAPE_ATTRS or not _holds_tensor(node.meta.get("val")):
        return View("meta", [x])
    nd = _ndim(_val(x))
    if attr in TRANSPOSE_ATTRS and nd is not None:
        perm = list(range(nd))[::-1] if attr == "T" else list(range(nd - 2)) + [nd - 1, nd - 2]
        return View("permute", [x], {"perm": perm})
    return View("unknown", [x], {"why": f"no rule for tensor attribute .{attr}"})


def _where(cap: Captured, node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return f"{path}:{node.name}" if path else node.name
    return node.name


Rule = Callable[..., Any]
