"""Capture: turn an ``nn.Module`` into an fx graph with shapes and parameter use-sites.

Two frontends produce the same thing, a :class:`Captured`:

* ``fx``: ``torch.fx.symbolic_trace`` with every ``torch.nn`` layer kept as a leaf
  ``call_module`` node (Linear, ConvNd, norms, MultiheadAttention, Embedding, ...).
* ``export``: ``torch.export.export`` with example inputs (aten-level graph; parameters are
  placeholders, mapped back to their qualified names).

Parameter *values* are never needed by the analysis, so the module is deep-copied onto the
``meta`` device (a copy is needed anyway: tracing can mutate module state) and shapes come from
one meta-tensor run. Tied parameters keep one canonical name (``named_parameters`` order).
"""
from __future__ import annotations

import contextlib
import copy
import operator
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn

from .errors import CaptureError


@dataclass(frozen=True)
class ParamInfo:
    """A trainable or frozen parameter of the model, addressed by qualified name."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    trainable: bool
    aliases: tuple[str, ...] = ()


@dataclass
class Captured:
    """An fx graph plus everything the passes need to know about it."""

    gm: fx.GraphModule
    frontend: str
    training: bool
    params: dict[str, ParamInfo]
    #: fx node -> canonical parameter name (get_attr nodes, export placeholders)
    param_nodes: dict[fx.Node, str] = field(default_factory=dict)
    #: canonical parameter name -> the nodes (op sites) that use it, filled by canonicalize
    sites: dict[str, list[str]] = field(default_factory=dict)
    #: module path -> nn.Module of the meta copy (fx frontend only)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    #: module object id -> its canonical path in the meta copy
    module_names: dict[int, str] = field(default_factory=dict)

    def trainable(self, name: str) -> bool:
        return self.params[name].trainable

    @cached_property
    def node_order(self) -> tuple[list[fx.Node], dict[fx.Node, int]]:
        """The graph's nodes in topological order and each node's position (the passes do not
        change the graph, so this is computed once)."""
        nodes = list(self.gm.graph.nodes)
        return nodes, {n: i for i, n in enumerate(nodes)}


class LeafTracer(fx.Tracer):
    """Keeps standard layers (and user-registered classes) as leaves. A ``torch.nn`` module made
    of other layers (``TransformerEncoderLayer``) has no rule of its own: it is traced through,
    except ``MultiheadAttention``, which has one."""

    extra_leaves: tuple[type, ...] = ()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.extra_leaves):
            return True
        if not super().is_leaf_module(m, qualname):
            return False
        return isinstance(m, nn.MultiheadAttention) or next(m.children(), None) is None


_REGISTERED_LEAVES: list[type] = []


def register_leaf(cls: type) -> type:
    """Keep ``cls`` as a leaf during tracing (it then needs a rule, see ``fxcons.ops``)."""
    _REGISTERED_LEAVES.append(cls)
    return cls


def meta_copy(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` whose parameters and buffers live on the meta device."""
    memo: dict[int, Any] = {}
    for p in model.parameters(recurse=True):
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers(recurse=True):
        memo[id(b)] = torch.empty_like(b, device="meta")
    _memo_computed_tensors(model, memo, lambda t: torch.empty_like(t, device="meta"))
    return copy.deepcopy(model, memo)


def real_copy(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` (tensors a hook computed, like pruning's ``weight``, detached)."""
    memo: dict[int, Any] = {}
    _memo_computed_tensors(model, memo, lambda t: t.detach().clone())
    return copy.deepcopy(model, memo)


def _memo_computed_tensors(model: nn.Module, memo: dict, make) -> None:
    """Tensors stored as plain module attributes by a hook (``torch.nn.utils.prune``, the legacy
    ``weight_norm``) are non-leaf results of autograd, which ``deepcopy`` refuses: copy them by
    hand (the hook recomputes them in every forward anyway)."""
    for mod in model.modules():
        for v in vars(mod).values():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and id(v) not in memo \
                    and v.grad_fn is not None:
                memo[id(v)] = make(v)


def forward_hooks(model: nn.Module) -> list[str]:
    """Modules whose forward fx would not see as written: forward (pre-)hooks, global module
    hooks, and ``forward`` replaced on the instance. torch.export runs them; fx does not."""
    from torch.nn.modules import module as M

    out = []
    if M._global_forward_hooks or M._global_forward_pre_hooks:
        out.append("(global module hooks)")
    for name, mod in model.named_modules():
        if mod._forward_hooks or mod._forward_pre_hooks or "forward" in vars(mod):
            out.append(name or "(the model)")
    return out


def gradient_hooks(model: nn.Module) -> list[str]:
    """Modules and parameters with backward hooks: they may change the gradient that training
    uses, which no capture shows."""
    from torch.nn.modules import module as M

    out = ["(global backward hooks)"] if (M._global_backward_hooks or M._global_backward_pre_hooks) else []
    for name, mod in model.named_modules():
        if mod._backward_hooks or mod._backward_pre_hooks:
            out.append(name or "(the model)")
    for name, p in model.named_parameters():
        if getattr(p, "_backward_hooks", None):
            out.append(name)
    return out


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty_like(x, device="meta") if x.is_floating_point() else x.to("meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def param_table(model: nn.Module) -> tuple[dict[str, ParamInfo], dict[int, str]]:
    """Canonical parameter names (tied parameters appear once, with their aliases)."""
    canon: dict[int, str] = {}
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in canon:
            aliases[id(p)].append(name)
        else:
            canon[id(p)] = name
            aliases[id(p)] = []
    table = {}
    for name, p in model.named_parameters():
        table[name] = ParamInfo(name, tuple(p.shape), p.dtype, p.requires_grad, tuple(aliases[id(p)]))
    return table, canon


def _norm_input_ok(mod: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``mod`` (a normalization) cannot take ``x``, or None."""
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        mod._check_input_dim(x)
        return None if x.shape[1] == mod.num_features else f"expects {mod.num_features} channels, got {x.shape[1]}"
    if isinstance(mod, nn.LayerNorm):
        ns = tuple(mod.normalized_shape)
        return None if tuple(x.shape[x.dim() - len(ns):]) == ns else f"expects trailing shape {ns}, got {tuple(x.shape)}"
    if isinstance(mod, nn.GroupNorm):
        return None if x.dim() >= 2 and x.shape[1] == mod.num_channels else f"expects {mod.num_channels} channels"
    raise TypeError(type(mod))


#: normalizations return a tensor like their input; on meta tensors they run slow Python
#: decompositions, so shape propagation applies that rule directly (after checking the input)
_SHAPE_PRESERVING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


class _MetaRecorder(fx.Interpreter):
    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        mod = self.fetch_attr(target)
        if type(mod) in _SHAPE_PRESERVING and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            why = _norm_input_ok(mod, args[0])
            if why:
                raise RuntimeError(f"{type(mod).__name__} {why}")
            return torch.empty_like(args[0])
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except ShapeError:
            raise
        except Exception as e:
            text = str(e).splitlines()[0] if str(e) else ""
            hint = ("the model makes tensors on a fixed device inside forward, which the meta copy "
                    "fxcons traces cannot mix with: use frontend='export' (--frontend export)"
                    if "device meta" in text or "meta and cpu" in text else
                    "check the example inputs (--example-shape) match what the model expects")
            raise ShapeError(f"shape propagation failed at node '{n.name}' ({n.op} {_target_name(n)}): "
                             f"{type(e).__name__}: {text}; {hint}") from None
        n.meta["val"] = out
        return out

    def run(self, *args: Any) -> Any:
        try:
            return super().run(*args)
        except ShapeError as e:  # fx appends "While executing ..." to the message: keep ours
            raise ShapeError(e.message) from None


class ShapeError(CaptureError):
    """The example inputs could not be run through the captured graph."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _target_name(n: fx.Node) -> str:
    return getattr(n.target, "__name__", None) or str(n.target)


class UnfollowableMutation(RuntimeError):
    """An in-place op whose effect the fx graph cannot show (it writes through a view)."""


#: ops that return a view of (or the very) tensor they read: writing into the result writes
#: into the input, and the reverse
_ALIASING = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "transpose", "t", "permute", "swapaxes", "swapdims", "movedim", "moveaxis", "expand", "expand_as",
    "broadcast_to", "getitem", "select", "narrow", "split", "split_with_sizes", "chunk", "unbind",
    "tensor_split", "diagonal", "as_strided", "unfold", "detach", "contiguous", "to", "type_as",
    "float", "double", "half", "bfloat16", "type", "cpu", "cuda", "real", "imag", "view_as_real",
    "alias", "getattr", "T", "mT", "ravel", "adjoint", "mH", "H", "conj", "resolve_conj", "resolve_neg",
    "view_as_complex", "positive", "align_as", "rename",
}
_AUGMENTED = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul", "iand", "ior", "ixor"}


_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
               operator.pow, operator.matmul, operator.and_, operator.or_, operator.xor)


def _discarded_arithmetic(node: fx.Node) -> bool:
    """``h += p`` on a Proxy falls back to ``h + p``: a tensor sum nobody reads is the trace of
    an in-place write that other names (a view made before it) still see."""
    return (node.op == "call_function" and node.target in _ARITHMETIC and not node.users
            and isinstance(node.args[0], fx.Node))


def _views_of(x: fx.Node) -> list[fx.Node]:
    """Every node that shares memory with ``x`` through a chain of views (``x[:, :].view(...)``)."""
    out, todo = [], [x]
    while todo:
        for u in todo.pop().users:
            if _call_name(u) in _ALIASING and u not in out:
                out.append(u)
                todo.append(u)
    return out


def _call_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        if isinstance(node.target, torch._ops.OpOverload):  # aten.add_.Tensor -> add_
            return node.target._schema.name.split("::")[-1]
        return getattr(node.target, "__name__", None)
    return None


def _writes_first_operand(node: fx.Node, gm: fx.GraphModule) -> bool:
    """``x.mul_(s)``, ``torch.relu_(x)``, ``x += y``, ``F.relu(x, inplace=True)``,
    ``nn.ReLU(inplace=True)(x)``: the op overwrites its first operand."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    name = _call_name(node)
    if name is None or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if name in _AUGMENTED or node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_function" and not name.endswith("_"):
        try:  # F.relu(x, True): a positional ``inplace``
            import inspect

            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
            return bound.arguments.get("inplace") is True
        except (TypeError, ValueError):
            return False
    return name.endswith("_") and not name.endswith("__") and name != "requires_grad_"


def follow_inplace_ops(gm: fx.GraphModule) -> int:
    """Make the graph show the effect of in-place ops.

    ``symbolic_trace`` records ``h.mul_(s)`` as a node, but later code that reads ``h`` still
    points to the node before the write, so the graph computes another function. Every later
    reader of the written tensor is rewired to the in-place node (whose value *is* the written
    tensor). A write through a view (``h[:, 0].mul_(2)``, ``v = h.view(...); v += 1``) or into
    a tensor that has views changes other tensors too: :class:`UnfollowableMutation` (the auto
    frontend then uses torch.export, which functionalizes). Returns the number of rewired uses."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    rewired = 0
    for node in list(gm.graph.nodes):
        if _discarded_arithmetic(node):
            raise UnfollowableMutation(
                f"'{node.name}' computes {node.args[0].name} {node.target.__name__} ... and discards the result: "
                "fx records an augmented assignment on a tensor (h += p) this way, losing the write")
        if not _writes_first_operand(node, gm):
            continue
        x = node.args[0]
        base = x
        while _call_name(base) in _ALIASING and base.args and isinstance(base.args[0], fx.Node):
            base = base.args[0]  # the tensor that owns the memory x views
        # the write is seen by every other tensor sharing that memory: refuse if one is read later
        aliases = [u for u in [base, *_views_of(base)] if u is not x and u is not node
                   and any(order[w] > order[node] for w in u.users)]
        if aliases:
            raise UnfollowableMutation(
                f"in-place op '{node.name}' writes '{x.name}', which shares memory with another tensor")
        for user in list(x.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(x, node)
                rewired += 1
    if rewired:
        gm.recompile()
    return rewired


@contextlib.contextmanager
def custom_functions(tracer: fx.Tracer | None = None):
    """Watch ``torch.autograd.Function.apply`` while the model's Python runs: yields the list of
    custom Functions called. With a ``tracer`` a call on proxies is recorded as one opaque node
    (``GRL.apply``) instead of being traced into: a custom Function's backward need not be the
    derivative of its forward (gradient reversal, straight-through estimators), so no rule may
    see through it."""
    seen: list[tuple[type, tuple]] = []
    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls, *args, **kwargs):
        seen.append((cls, args))
        if tracer is not None and any(isinstance(a, fx.Proxy) for a in leaves((args, kwargs))):
            return tracer.create_proxy("call_function", _opaque_apply(cls, original), args, kwargs)
        return original.__get__(None, cls)(*args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)
    try:
        yield seen
    finally:
        torch.autograd.Function.apply = original


def honest_function(cls: type, args: tuple) -> bool:
    """Is ``cls``'s backward the derivative of its forward? Checked in float64 at random inputs of
    the traced arguments' shapes: the gradient through ``cls.apply`` (its own backward) against
    autograd through ``cls.forward`` called as plain code. Bloom's GeLUFunction passes; a
    gradient-reversal layer does not; anything that cannot be checked does not."""
    g = torch.Generator().manual_seed(0)

    def real(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return torch.randn(tuple(a.shape), generator=g, dtype=torch.float64).requires_grad_()
        return torch.zeros(tuple(a.shape), dtype=a.dtype) if isinstance(a, torch.Tensor) else a

    try:
        xs = [real(a) for a in args]
        inputs = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
        own = [o for o in leaves(cls.apply(*xs)) if isinstance(o, torch.Tensor) and o.requires_grad]
        if cls.setup_context is not torch.autograd.Function.setup_context:
            plain = cls.forward(*xs)
        else:
            plain = cls.forward(torch.autograd.function.FunctionCtx(), *xs)
        plain = [o for o in leaves(plain) if isinstance(o, torch.Tensor) and o.requires_grad]
        if not inputs or not own or len(own) != len(plain):
            return False
        vs = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in own]
        g1 = torch.autograd.grad(sum((o * v).sum() for o, v in zip(own, vs)), inputs, allow_unused=True)
        g2 = torch.autograd.grad(sum((o * v).sum() for o, v in zip(plain, vs)), inputs, allow_unused=True)
        return all((a is None and b is None) or (a is not None and b is not None and
                                                 torch.allclose(a, b, rtol=1e-6, atol=1e-9)) for a, b in zip(g1, g2))
    except Exception:  # noqa: BLE001 - a Function we cannot exercise is not trusted
        return False


def _opaque_apply(cls: type, original) -> Callable:
    """``cls.apply`` as a plain function: the graph's target for a custom autograd.Function."""
    def run(*args, **kwargs):
        return original.__get__(None, cls)(*args, **kwargs)

    run.__name__ = f"{cls.__name__}_apply"
    run.__qualname__ = f"{cls.__qualname__}.apply (a custom autograd.Function: its backward is its own)"
    return run


def leaves(x):
    """Every leaf of nested lists, tuples and dicts (graph operands, call arguments, outputs)."""
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from leaves(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from leaves(y)
    else:
        yield x


def _capture_fx(mm: nn.Module, example_inputs: tuple, kwargs: dict) -> fx.GraphModule:
    tracer = LeafTracer()
    tracer.extra_leaves = tuple(_REGISTERED_LEAVES)
    concrete = None
    with custom_functions(tracer):
        graph = tracer.trace(mm, concrete_args=concrete)
    gm = fx.GraphModule(tracer.root, graph, mm.__class__.__name__)
    follow_inplace_ops(gm)
    _MetaRecorder(gm).run(*example_inputs, **kwargs) if not kwargs else _run_kwargs(gm, example_inputs, kwargs)
    return gm


def _run_kwargs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> None:
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    ordered = list(args) + [kwargs.get(nm) for nm in names[len(args):]]
    _MetaRecorder(gm).run(*ordered)


def _capture_export(mm: nn.Module, example_inputs: tuple, kwargs: dict, training: bool):
    with custom_functions() as seen:
        ep = torch.export.export(mm, example_inputs, kwargs=kwargs or None, strict=False)
    dishonest = sorted({cls.__qualname__ for cls, args in seen if not honest_function(cls, args)})
    if dishonest:
        raise CaptureError(f"forward calls the custom autograd.Function {', '.join(dishonest)}, whose backward is not "
                           "the derivative of its forward (gradient reversal, straight-through...): torch.export traces "
                           "only the forward, so no law can be derived through it; frontend='fx' keeps it opaque")
    gm = ep.graph_module
    follow_inplace_ops(gm)  # the training IR keeps in-place ops (aten.add_): same treatment as fx
    sig = ep.graph_signature
    return gm, dict(sig.inputs_to_parameters), dict(sig.inputs_to_buffers)


def capture(
    model: nn.Module,
    example_inputs: tuple | None,
    frontend: str = "auto",
    training: bool = True,
    example_kwargs: dict | None = None,
) -> Captured:
    """Capture ``model`` (never mutated) as an fx graph with shapes.

    ``frontend``: ``"fx"`` (symbolic_trace), ``"export"`` (torch.export) or ``"auto"`` (fx,
    falling back to export when symbolic tracing fails or leaves ``torch.fx.wrap``'ed functions
    opaque, e.g. torchvision's Swin attention; the fx graph is kept if export fails).
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"expected an nn.Module, got {type(model).__name__}")
    params, canon = param_table(model)
    if not any(p.trainable for p in params.values()):
        raise CaptureError("the model has no trainable parameters (requires_grad=True): nothing can be conserved")
    if example_inputs is None:
        raise CaptureError(
            "example inputs are needed to know tensor shapes: pass example_inputs=(x,) "
            "(command line: --example-shape 1,3,224,224)"
        )
    example_inputs = tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    hooked = forward_hooks(model)
    if hooked and frontend == "fx":
        raise CaptureError(f"symbolic_trace does not see forward hooks or replaced forward methods "
                           f"(on {', '.join(hooked[:3])}): use frontend='export' (--frontend export)")
    if hooked:
        frontend = "export"  # auto: only torch.export runs the hooks
    grad_hooks = gradient_hooks(model)
    if grad_hooks:
        warnings.warn(f"fxcons: backward hooks on {', '.join(grad_hooks[:3])} may change the gradients "
                      "training uses; the laws hold for the gradient of the loss, which the hooks may alter",
                      stacklevel=3)
    mm = meta_copy(model)
    mm.train(training)
    meta_args = _to_meta(example_inputs)
    meta_kwargs = _to_meta(kwargs)
    # map meta copy names back to the original canonical names (same traversal order)
    orig_names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    meta_names = [n for n, _ in mm.named_parameters(remove_duplicate=False)]
    assert orig_names == meta_names
    first_seen: dict[int, str] = {}
    for n, p in mm.named_parameters(remove_duplicate=False):
        first_seen.setdefault(id(p), n)
    errors = []
    fx_cap = None  # an fx capture kept in case export fails (auto mode, opaque wrapped calls)
    shape_error: ShapeError | None = None
    if frontend in ("auto", "fx"):
        try:
            gm = _capture_fx(mm, meta_args, meta_kwargs)
            cap = Captured(gm, "fx", training, params)
            modules = dict(gm.named_modules())
            cap.modules = modules
            for name, mod in mm.named_modules(remove_duplicate=False):
                cap.module_names.setdefault(id(mod), name)
            for node in gm.graph.nodes:
                if node.op == "get_attr":
                    obj = _get_attr(gm, node.target)
                    if isinstance(obj, nn.Parameter):
                        cap.param_nodes[node] = first_seen.get(id(obj), node.target)
            cap.param_of_obj = {pid: nm for pid, nm in first_seen.items()}
            if frontend == "fx" or not _opaque_wrapped_calls(gm):
                return cap
            fx_cap = cap  # torch.fx.wrap'ed functions hide their insides from fx: try export
        except ShapeError as e:
            if frontend == "fx":
                raise
            shape_error = e  # export may still run it (a tensor made on a fixed device in forward)
        except CaptureError:
            raise
        except Exception as e:
            if frontend == "fx":
                raise CaptureError(f"symbolic_trace failed: {type(e).__name__}: {_first_line(e)}. Try --frontend export") from None
            errors.append(f"symbolic_trace: {type(e).__name__}: {_first_line(e)}")
        mm = meta_copy(model)
        mm.train(training)
    try:
        try:
            gm, in2p, _ = _capture_export(mm, meta_args, meta_kwargs, training)
        except Exception as e:
            if not _device_mismatch(e):
                raise
            # forward makes tensors on a fixed device (torch.tensor([...])), which the meta copy
            # cannot mix with: export a real copy instead (values are still never read)
            mm = real_copy(model)
            mm.train(training)
            gm, in2p, _ = _capture_export(mm, example_inputs, kwargs, training)
    except Exception as e:
        if fx_cap is not None:
            return fx_cap
        if shape_error is not None:  # both failed: the fx message is the precise one
            raise ShapeError(f"{shape_error.message} (torch.export failed too: {type(e).__name__}: "
                             f"{_first_line(e)[:150]})") from None
        errors.append(f"torch.export: {type(e).__name__}: {_first_line(e)}")
        raise CaptureError("could not capture the model (" + "; ".join(errors) + ")") from None
    cap = Captured(gm, "export", training, params)
    by_name = {}  # every alias of a tied parameter -> its canonical name (this copy's objects)
    canonical: dict[int, str] = {}
    for n, p in mm.named_parameters(remove_duplicate=False):
        by_name[n] = canonical.setdefault(id(p), n)
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.name in in2p:
            cap.param_nodes[node] = by_name.get(in2p[node.name], in2p[node.name])
    cap.param_of_obj = {}
    return cap


def _device_mismatch(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return "DeviceMismatch" in text or ("meta" in text and "same device" in text)


def _opaque_wrapped_calls(gm: fx.GraphModule) -> list[str]:
    """Calls of user functions registered with ``torch.fx.wrap`` (e.g. torchvision's
    ``shifted_window_attention``): fx records them as one opaque call; torch.export sees inside."""
    from torch.fx._symbolic_trace import _wrapped_fns_to_patch

    from .ops import _fn_name

    out = []
    for node in gm.graph.nodes:
        f = node.target
        if node.op != "call_function" or _fn_name(f) is not None:
            continue
        key = (id(getattr(f, "__globals__", None)), getattr(f, "__name__", None))
        if key in _wrapped_fns_to_patch:
            out.append(node.name)
    return out


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""
