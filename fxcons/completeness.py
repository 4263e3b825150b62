"""Completeness: the Lie-algebra count of LAWS.md §5 (DESIGN.md step 7), for small blocks.

A conservation law h of gradient flow is a function whose gradient is orthogonal, at every θ, to
every field V_{x,v}(θ) = ∇_θ <v, f_θ(x)> (all inputs x, all output directions v) and hence to
every iterated Lie bracket [V, W](θ) = DW(θ)·V(θ) − DV(θ)·W(θ) of such fields (Marcotte,
Gribonval, Peyré, NeurIPS 2023). At a generic θ the number of independent laws is

    D − dim Lie(W)(θ)          (D: trainable scalars)

Sampling finitely many x, v and truncating the brackets at ``depth`` can only *miss* directions
of Lie(W)(θ), so the number it gives is an **upper** bound on the number of laws. The laws fxcons
emits, with the rank of their gradients at θ, give the **lower** bound. Equal bounds certify that
fxcons found every law of the model (in the functional sense: every other law is a function of
these). The fields are also a second soundness check: every emitted law's gradient must be
orthogonal to every field and bracket sampled, not only to the training gradients of the oracle.

Everything runs in float64 on a perturbed copy of the model (generic θ, ``verify.probe_model``),
normalization eps lowered to 1e-20 (eps-laws are exact laws of the eps → 0 limit), BatchNorm
running statistics switched off in training mode (they are buffers, not part of f_θ) and one
dropout mask per forward (so that every field is a fixed function of θ). Brackets use
``torch.func`` (forward-over-reverse), so the cost grows fast with depth: this is a check for
blocks of up to a few thousand parameters, not for whole zoo models.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import FxconsError
import inspect

import torch.nn.functional as F

from .verify import _LowerEps, _PrecisionWatch, _cotangent, flat_outputs, probe_model, random_inputs

#: normalization eps of the count (the eps → 0 limit, where eps-laws are exact)
EPS = 1e-20


@dataclass(frozen=True)
class Tolerances:
    """Numerical thresholds of the count, by the precision the model computes in."""

    rank: float  # a vector adds a dimension if its part outside the span exceeds rank × its norm
    ortho: float  # largest |<∇h, w>| / (‖∇h‖‖w‖) accepted between an emitted law and a field
    fd: float  # largest gap between a bracket and its finite differences (relative to its terms)
    fd_steps: tuple[float, ...]  # finite-difference steps, relative to ‖θ‖


#: float64 throughout; and models that compute part of their forward in float32 (LLaMA's rotary
#: tables): their fields carry ~1e-7 relative noise, which must not count as dimensions
TOLERANCES = {"float64": Tolerances(1e-9, 1e-7, 1e-4, (1e-5, 1e-6, 1e-7)),
              "low": Tolerances(1e-4, 1e-4, 1e-2, (1e-2, 1e-3, 1e-4))}

#: rank decisions are clear-cut when the smallest residual kept exceeds the largest dismissed this many times
CLEAR_GAP = 100.0
#: field inputs are the example's scale times exp(U(-INPUT_SPREAD, INPUT_SPREAD))
INPUT_SPREAD = math.log(4.0)
#: default largest number of trainable scalars
MAX_PARAMS = 3000

Field = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CompletenessReport:
    """Bounds on the number of independent laws of a model at a generic θ (LAWS.md §5)."""

    params: int  # D: trainable scalars
    emitted: int  # scalar laws fxcons emitted
    lower: int  # rank of their gradients: independent laws fxcons found
    upper: int  # D − dim of the sampled Lie algebra: at most this many independent laws exist
    dims: list[int] = field(default_factory=list)  # dim of the sampled span after depth 1, 2, ...
    depth: int = 0  # bracket depth reached (1 = the fields themselves)
    fields: int = 0  # fields and brackets evaluated
    orthogonality_max: float = 0.0  # worst |<∇h, w>| / (‖∇h‖‖w‖) over laws h and sampled w
    margin: tuple[float, float] = (0.0, 1.0)  # (largest rejected, smallest accepted) residual
    thetas: int = 1  # parameter draws tried
    bracket_fd_error: float = 0.0  # worst relative gap between a bracket and its finite differences
    note: str = ""
    precision: str = "float64"  # the lowest precision the model computed in (see TOLERANCES)

    @property
    def tolerances(self) -> Tolerances:
        return TOLERANCES["float64" if self.precision == "float64" else "low"]
    seconds: float = 0.0

    @property
    def clear(self) -> bool:
        """The rank decisions were clear-cut: every residual kept as a new dimension exceeds
        every one dismissed as rounding by CLEAR_GAP times (a smooth model at small weights can
        give a continuous spectrum, and then no count is trustworthy)."""
        return self.margin[0] == 0 or self.margin[1] >= CLEAR_GAP * self.margin[0]

    @property
    def certified(self) -> bool:
        """Every law of the model is a function of the emitted ones."""
        return self.upper == self.lower and self.sound and self.clear

    @property
    def sound(self) -> bool:
        """No emitted law contradicts a sampled field (and the bounds are consistent)."""
        return self.orthogonality_max <= self.tolerances.ortho and self.lower <= self.upper

    @property
    def gap(self) -> int:
        """Laws that may exist and were not emitted (0 when certified)."""
        return self.upper - self.lower

    @property
    def verdict(self) -> str:
        if not self.sound:
            return "UNSOUND: an emitted law is not orthogonal to the fields"
        if self.certified:
            return "complete"
        if not self.clear:
            return (f"inconclusive: rank decisions not clear-cut (a residual of {self.margin[0]:.0e} dismissed, "
                    f"one of {self.margin[1]:.0e} kept); between {self.lower} and {self.upper} laws")
        return f"gap of {self.gap}: up to {self.gap} independent laws not emitted (or brackets too shallow)"

    def to_dict(self) -> dict:
        return {"params": self.params, "emitted": self.emitted, "lower": self.lower, "upper": self.upper,
                "gap": self.gap, "certified": self.certified, "sound": self.sound, "clear": self.clear,
                "verdict": self.verdict,
                "dims": self.dims, "depth": self.depth, "fields": self.fields, "thetas": self.thetas,
                "orthogonality_max": self.orthogonality_max,
                "rank_margin": {"largest_rejected": self.margin[0], "smallest_accepted": self.margin[1]},
                "bracket_fd_error": self.bracket_fd_error, "note": self.note, "precision": self.precision,
                "seconds": round(self.seconds, 3)}


class _Span:
    """An orthonormal basis of the vectors seen so far (block Gram–Schmidt, twice)."""

    def __init__(self, dim: int, tol: float) -> None:
        self.tol = tol
        self.Q = torch.zeros(dim, 0, dtype=torch.float64)
        self.rejected = 0.0  # largest relative residual judged dependent
        self.accepted = 1.0  # smallest relative residual judged a new dimension

    @property
    def dim(self) -> int:
        return self.Q.shape[1]

    def add(self, vecs: torch.Tensor) -> int:
        """Add the rows of ``vecs``; returns how many new dimensions they brought."""
        norms = vecs.norm(dim=1)
        vecs = vecs[norms > 0] / norms[norms > 0, None]
        if not len(vecs):
            return 0
        R = vecs.T
        for _ in range(2):
            R = R - self.Q @ (self.Q.T @ R)
        U, s, _ = torch.linalg.svd(R, full_matrices=False)
        # each column of R had norm 1 before projection: singular values are relative residuals
        new = s > self.tol
        if (~new).any():
            self.rejected = max(self.rejected, float(s[~new].max()))
        if new.any():
            self.accepted = min(self.accepted, float(s[new].min()))
            self.Q = torch.cat([self.Q, U[:, new]], dim=1)
        return int(new.sum())


def _normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    m = x.mean(dims, keepdim=True)
    c = x - m
    return c / torch.sqrt(c.square().mean(dims, keepdim=True) + eps)


def _affine(y: torch.Tensor, weight, bias, channel_axis: int | None) -> torch.Tensor:
    """``y * weight + bias``, the affine parameters laid along ``channel_axis`` (None: trailing)."""
    def shaped(t):
        if t is None or channel_axis is None:
            return t
        return t.reshape((1, -1) + (1,) * (y.dim() - 2))
    w, b = shaped(weight), shaped(bias)
    y = y * w if w is not None else y
    return y + b if b is not None else y


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(input.dim() - len(tuple(normalized_shape)), input.dim()))
    return _affine(_normalize(input, dims, eps), weight, bias, None)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if training or running_mean is None:
        y = _normalize(input, (0,) + tuple(range(2, input.dim())), eps)
    else:
        shape = (1, -1) + (1,) * (input.dim() - 2)
        y = (input - running_mean.reshape(shape)) / torch.sqrt(running_var.reshape(shape) + eps)
    return _affine(y, weight, bias, 1)


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    if not use_input_stats:
        return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    return _affine(_normalize(input, tuple(range(2, input.dim())), eps), weight, bias, 1)


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    g = input.reshape(input.shape[0], num_groups, -1)
    return _affine(_normalize(g, (2,), eps).reshape(input.shape), weight, bias, 1)


class _CompositeNorms(_LowerEps):
    """Normalizations as compositions of elementary ops, at eps ``eps``.

    Brackets of depth 3 need third derivatives, and PyTorch's fused kernels get them wrong:
    ``F.layer_norm``'s third derivative is silently wrong in torch 2.14 (off by O(1) against
    finite differences) and ``F.batch_norm`` / ``F.instance_norm`` refuse third order. The
    composite forms (mean, centre, divide by the root of the variance) differentiate correctly
    to any order; every bracket is also checked against finite differences (``_fd_bracket``)."""

    COMPOSITE = {F.layer_norm: _layer_norm, F.batch_norm: _batch_norm, F.instance_norm: _instance_norm,
                 F.group_norm: _group_norm}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        impl = self.COMPOSITE.get(func)
        if impl is None:
            return super().__torch_function__(func, types, args, kwargs)
        bound = inspect.signature(func).bind(*args, **(kwargs or {}))
        bound.arguments["eps"] = self.eps
        return impl(**bound.arguments)


class _Functional:
    """f_θ(x) as a function of the flat trainable vector θ (float64, generic θ)."""

    def __init__(self, ann, model: nn.Module, seed: int, max_params: int, fresh: bool = False) -> None:
        self.ann = ann
        m = probe_model(model, seed, eps=EPS)
        if fresh:
            _redraw(m, seed)
        m.train(ann.training)
        for mod in m.modules():
            if getattr(mod, "track_running_stats", False) and ann.training:
                # batch statistics only: the running averages are state, not part of f_θ
                mod.track_running_stats = False
                mod.running_mean = mod.running_var = None
                if hasattr(mod, "num_batches_tracked"):
                    mod.num_batches_tracked = None
        self.model = m
        params = dict(m.named_parameters())
        self.names = [n for n, p in params.items() if p.requires_grad]
        self.shapes = [params[n].shape for n in self.names]
        self.fixed = {n: p.detach() for n, p in params.items() if not p.requires_grad}
        self.fixed.update(dict(m.named_buffers()))
        self.theta = torch.cat([params[n].detach().reshape(-1) for n in self.names])
        if self.theta.numel() > max_params:
            raise FxconsError(f"completeness: the model has {self.theta.numel()} trainable scalars, more than "
                              f"max_params={max_params}; the Lie-algebra count is for small blocks (build a small "
                              f"version of the model, or raise max_params / --max-params)")
        if self.theta.numel() == 0:
            raise FxconsError("completeness: the model has no trainable parameters")
        self.seed = seed
        watch = _PrecisionWatch()  # a model may compute part of its forward in float32
        args, kwargs = random_inputs(ann.example_inputs, ann.example_kwargs, seed)
        with torch.no_grad(), watch:  # (the outputs' shapes and dtypes shape every cotangent)
            self.templates = self.outputs(self.theta, args, kwargs)
        low = min(watch.dtypes, key=lambda d: torch.finfo(d).bits, default=torch.float64)
        self.precision = str(low).replace("torch.", "")
        self.tol = TOLERANCES["float64" if low == torch.float64 else "low"]

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = theta[i:i + k].reshape(s)
            i += k
        return out

    def outputs(self, theta: torch.Tensor, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        torch.manual_seed(self.seed)  # one dropout mask: the same function of θ at every call
        # the math kernel of scaled_dot_product_attention: the fused CPU kernels have no forward AD
        with _CompositeNorms(EPS), sdpa_kernel(SDPBackend.MATH):
            out = torch.func.functional_call(self.model, {**self.fixed, **self.unflatten(theta)}, args, kwargs)
        return [o for o in flat_outputs(out) if o.is_floating_point()]

    def field(self, k: int) -> Field:
        """V_k(θ) = ∇_θ <v_k, f_θ(x_k)> for the k-th random input x_k and output direction v_k."""
        args, kwargs = random_inputs(self.ann.example_inputs, self.ann.example_kwargs, 7919 * k + self.seed)
        gen = torch.Generator().manual_seed(104729 + k)
        # inputs at scales from 1/4 to 4 times the example's: every ReLU switches and every ReLU6
        # saturates somewhere (data that leaves a unit in one regime shows laws it does not have)
        scale = float(torch.empty(()).uniform_(-INPUT_SPREAD, INPUT_SPREAD, generator=gen).exp())
        args, kwargs = _scaled(args, scale), {n: _scaled(v, scale) for n, v in kwargs.items()}
        vs = _cotangent(self.templates, self.ann.head, gen)

        def pairing(theta: torch.Tensor) -> torch.Tensor:
            return sum((o * v).sum() for o, v in zip(self.outputs(theta, args, kwargs), vs))

        return torch.func.grad(pairing)


def _scaled(x: Any, c: float) -> Any:
    if isinstance(x, tuple):
        return tuple(_scaled(v, c) for v in x)
    return x * c if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _redraw(m: nn.Module, seed: int) -> None:
    """Replace every parameter by an independent draw around its own mean: with its own spread
    (at least 0.05) for odd seeds, at unit scale for even ones (spread at least 1/√fan-in, 0.3
    for vectors). Either may leave units dead or saturated where the model's own θ does not;
    unit scale also leaves the near-linear regime of small initialisations (GPT-2's 0.02), where
    a smooth activation barely bends and the fields look almost dependent."""
    g = torch.Generator().manual_seed(50_000 + seed)
    with torch.no_grad():
        for p in m.parameters():
            mean = float(p.mean()) if p.numel() else 0.0
            floor = 0.05
            if seed % 2 == 0:
                floor = 1.0 / math.sqrt(max(1, p.numel() // p.shape[0])) if p.dim() >= 2 else 0.3
            std = max(float(p.std()) if p.numel() > 1 else 0.0, floor)
            p.copy_(mean + std * torch.randn(p.shape, generator=g, dtype=torch.float64))


class bracket:
    """The field [a, b](θ) = Db(θ)·a(θ) − Da(θ)·b(θ) (forward-over-reverse)."""

    def __init__(self, a: Field, b: Field) -> None:
        self.a, self.b = a, b

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        _, db = torch.func.jvp(self.b, (theta,), (self.a(theta),))
        _, da = torch.func.jvp(self.a, (theta,), (self.b(theta),))
        return db - da

    def fd_error(self, theta: torch.Tensor, value: torch.Tensor, steps: tuple[float, ...]) -> float:
        """Gap between ``value`` (this bracket at θ, by autodiff) and central finite differences
        of the two fields, relative to the size of the two terms Db·a and Da·b: an independent
        check of the higher derivatives autodiff took. A step can straddle a ReLU kink, which
        spoils that step only: the best of the ``steps`` counts."""
        da, db = self.a(theta).detach(), self.b(theta).detach()

        def along(f: Field, d: torch.Tensor, rel: float) -> torch.Tensor:
            h = rel * max(float(theta.norm()), 1.0) / max(float(d.norm()), 1e-300)
            with torch.no_grad():
                return (f(theta + h * d) - f(theta - h * d)) / (2 * h)

        errs = []
        for rel in steps:
            tb, ta = along(self.b, da, rel), along(self.a, db, rel)
            # relative to the two terms: a bracket is often a small difference of large terms
            scale = max(float(tb.norm() + ta.norm()), 1e-300)
            errs.append(float((tb - ta - value).norm()) / scale)
        return min(errs)


def law_gradients(ann, fn: _Functional) -> torch.Tensor:
    """(laws × D): the gradient of every emitted scalar law at θ."""
    fixed = {n: p.to(torch.float64) for n, p in fn.fixed.items()}

    def values(theta: torch.Tensor) -> torch.Tensor:
        vals = ann.laws.evaluate({**fixed, **fn.unflatten(theta)}, check=False)
        return torch.cat([v.reshape(-1) for v in vals.values()]) if vals else theta.new_zeros(0)

    if ann.total_laws == 0:
        return fn.theta.new_zeros(0, fn.theta.numel())
    return torch.autograd.functional.jacobian(values, fn.theta, vectorize=True)


def numerical_rank(M: torch.Tensor, tol: float = TOLERANCES["float64"].rank) -> int:
    """Rank of the rows of M, each normalized (laws of very different scales count alike)."""
    if not len(M):
        return 0
    n = M.norm(dim=1, keepdim=True)
    M = M[n[:, 0] > 0] / n[n[:, 0] > 0]
    if not len(M):
        return 0
    s = torch.linalg.svdvals(M)
    return int((s > tol * s[0]).sum())


def completeness(ann, model: nn.Module | None = None, *, depth: int = 3, seed: int = 0, thetas: int = 3, draws: int = 12,
                 batch: int = 16, patience: int = 2, max_params: int = MAX_PARAMS,
                 progress: Callable[[str], Any] | None = None) -> CompletenessReport:
    """Lower and upper bounds on the number of independent laws of ``ann``'s model (LAWS.md §5).

    At a random generic θ, depth 1 samples fields V_{x,v} in batches of ``batch`` until
    ``patience`` batches in a row add no dimension; each deeper level samples brackets [V, B] of a
    fresh field V with a vector field B of the previous level the same way. Sampling stops as soon
    as the bounds meet (certified). A θ that is not generic (a ReLU unit dead on all data: its
    weights then look conserved) only lowers the dimension: ``draws`` parameter draws (the model's
    own θ perturbed, then independent draws) are screened by how many entries a batch of fields
    moves, the count runs at up to ``thetas`` of them, most generic first, and the smallest gap
    is kept."""
    t0 = time.perf_counter()
    model = model if model is not None else ann.model
    if model is None:
        raise FxconsError("completeness needs the model (annotate was given none)")
    with torch.random.fork_rng(devices=[]):  # the fields fix the dropout seed: keep the caller's RNG
        try:
            rep = _best_theta(ann, model, depth, seed, thetas, draws, batch, patience, max_params, progress)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise FxconsError(f"completeness: torch.func cannot differentiate this model twice ({type(e).__name__}: "
                              f"{first}); custom autograd.Functions need setup_context and a jvp") from None
    rep.seconds = time.perf_counter() - t0
    return rep


def _best_theta(ann, model, depth, seed, thetas, draws, batch, patience, max_params, progress) -> CompletenessReport:
    """Screen ``draws`` parameter draws, count at the ``thetas`` most generic ones (best first)
    until one certifies; keep the smallest gap."""
    fns = [_Functional(ann, model, seed + k, max_params, fresh=k > 0) for k in range(max(draws, 1))]
    fns.sort(key=lambda fn: _genericity(fn, batch), reverse=True)
    rep = None
    for k, fn in enumerate(fns[:max(thetas, 1)]):
        one = _at_theta(ann, fn, depth, batch, patience, progress)
        if rep is None or (not one.clear, one.upper - one.lower) < (not rep.clear, rep.upper - rep.lower):
            one.orthogonality_max = max(one.orthogonality_max, rep.orthogonality_max if rep else 0.0)
            one.fields += rep.fields if rep else 0
            rep = one
        else:
            rep.orthogonality_max = max(rep.orthogonality_max, one.orthogonality_max)
            rep.fields += one.fields
        rep.thetas = k + 1
        if rep.certified or not rep.sound:
            break
    return rep


def _genericity(fn: _Functional, batch: int) -> tuple[int, int]:
    """How generic θ looks from ``batch`` fields: the parameter entries some field moves (a unit
    dead or saturated on every input moves none of its own), then the rank of the fields."""
    V = torch.stack([fn.field(k)(fn.theta).detach() for k in range(batch)])
    col = V.abs().amax(0)
    live = int((col > 1e-12 * float(col.max())).sum()) if float(col.max()) > 0 else 0
    return live, numerical_rank(V, fn.tol.rank)


def _at_theta(ann, fn: _Functional, depth: int, batch: int, patience: int, progress) -> CompletenessReport:
    D = fn.theta.numel()
    G = law_gradients(ann, fn)
    lower = numerical_rank(G, fn.tol.rank)
    Gn = G / G.norm(dim=1, keepdim=True).clamp_min(1e-300)
    rep = CompletenessReport(params=D, emitted=ann.total_laws, lower=lower, upper=D, precision=fn.precision)
    span = _Span(D, fn.tol.rank)
    counter = iter(range(10**9))

    def sample(make: Callable[[], Field]) -> list[Field] | None:
        """Draw batches from ``make`` until the span stops growing; the fields that grew it (None:
        the brackets failed their finite-difference check)."""
        kept: list[Field] = []
        idle = 0
        while idle < patience and D - span.dim > lower:
            fs = [make() for _ in range(batch)]
            vecs = torch.stack([f(fn.theta).detach() for f in fs])
            rep.fields += len(fs)
            if isinstance(fs[0], bracket) and not kept and not idle:
                # the first batch of each depth: autodiff's higher derivatives against finite
                # differences; a depth whose brackets disagree is not used (a shallower count
                # only loosens the upper bound)
                err = fs[0].fd_error(fn.theta, vecs[0], fn.tol.fd_steps)
                rep.bracket_fd_error = max(rep.bracket_fd_error, err)
                if err > fn.tol.fd:
                    rep.note = (f"depth-{rep.depth} brackets disagree with finite differences ({err:.1e}): "
                                f"an op's higher derivative is wrong in this PyTorch; counted to depth {rep.depth - 1}")
                    return None
            if len(Gn):
                w = vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-300)
                rep.orthogonality_max = max(rep.orthogonality_max, float((Gn @ w.T).abs().max()))
            before = span.dim
            grew = span.add(vecs)
            idle = 0 if grew else idle + 1
            if grew:
                kept += fs  # the batch as a whole brought new directions
            if progress:
                progress(f"θ#{fn.seed} depth {rep.depth}: dim {span.dim} of at most {D - lower} "
                         f"({span.dim - before:+d})")
        return kept

    gen = torch.Generator().manual_seed(fn.seed)
    prev: list[Field] = []
    for level in range(1, depth + 1):
        rep.depth = level
        if level == 1:
            prev = sample(lambda: fn.field(next(counter)))
        else:
            base = prev
            prev = sample(lambda: bracket(fn.field(next(counter)),
                                          base[int(torch.randint(len(base), (1,), generator=gen))]))
            if prev is None:
                rep.depth = level - 1
                break
        rep.dims.append(span.dim)
        if D - span.dim <= lower or not prev:
            break
    rep.upper = D - span.dim
    rep.margin = (span.rejected, span.accepted)
    return rep
