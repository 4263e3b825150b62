"""The numerical oracle of LAWS.md §2, and the direct invariance check.

For random parameters θ (the model's weights, perturbed, in float64), random inputs x and a
random cotangent v, one backward pass gives g = ∇_θ <v, f_θ(x)>. Every law h must satisfy

    r(h) = |<∇h(θ), g>| / (‖∇h(θ)‖ · ‖g on the entries h depends on‖)  ≈ 0

(≈1e-12 for exact laws in float64; tolerance 1e-8, or float32-level 1e-5 when the model itself
casts to float32 inside its forward, which the probe detects). Laws that are exact only as a
normalization's eps -> 0 are checked with every ``eps`` attribute lowered to 1e-12 (tolerance
1e-4); one that fails there is probed again at eps = 1e-20 (same θ, x, v): the ratio of an
eps-law's violation |<∇h, g>| falls with eps (≥ 1000-fold; a nearly dead channel whose
variance is ~1e-12 makes the eps term visible at the first probe), a non-law's does not. With
``head="classification"`` the cotangent has zero sum over the class axis. A probe whose gradient is rounding noise tests
nothing. The invariance check applies a random group element of every family and compares the
outputs.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .capture import real_copy

EXACT_TOL = 1e-8
EPS_TOL = 1e-4
#: normalization eps of the probes: every eps-law at the first; the eps-laws that fail there
#: again at the second (the eps → 0 limit)
EPS_PROBE = (1e-12, 1e-20)
#: an eps-law's violation must shrink at least this much from the first eps to the second
EPS_SHRINK = 1e-3
#: exact-law tolerance when the model itself computes part of its forward in lower precision
LOW_PRECISION_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
#: a law is tested by a probe only if the gradient on its entries exceeds LIVE × ‖g‖
LIVE = 1e-7
#: a probe whose ‖g‖ is below ROUNDOFF × gradient_scale sees an output that does not depend
#: on θ (only rounding noise, or an eps-sized dependence, is left): it tests no law
ROUNDOFF = 1e-6


def gradient_scale(outs, vs, params) -> float:
    """‖v‖·‖f‖ / ‖θ‖: the size of g = ∇_θ<v, f> for an output of degree ~1 in θ.

    An output that does not depend on θ at all (a BatchNorm that normalizes a one-channel
    input, LAWS.md §5's toy cases) gives a g made only of rounding errors, whose direction is
    random: every function is a law there, and no ratio measured on such a g means anything.
    For an output of degree k ≥ 1 in θ, Euler's identity <θ, g> = k<v, f> keeps ‖g‖ within a
    few decades of this scale, far above ROUNDOFF."""
    vf = math.sqrt(sum(float(o.detach().square().sum()) * float(v.square().sum()) for o, v in zip(outs, vs)))
    theta = math.sqrt(sum(float(p.detach().square().sum()) for p in params))
    return vf / max(theta, 1e-300)


@dataclass
class FamilyCheck:
    name: str
    kind: str
    exactness: str
    count: int
    max_ratio: float
    untested: int
    passed: bool
    eps: float | None = None  # eps-laws: the normalization eps the ratio was measured at


#: largest relative output change the invariance check accepts (eps-laws move the output by
#: O(eps / variance) even with eps lowered to 1e-12)
INVARIANCE_TOL = {"exact": 1e-8, "eps": 1e-4}


@dataclass
class VerifyReport:
    families: list[FamilyCheck] = field(default_factory=list)
    invariance: float | None = None
    probes: int = 0
    #: the lowest floating precision the float64 probe computed in (a model may cast inside)
    precision: torch.dtype = torch.float64

    @property
    def checked(self) -> int:
        return sum(f.count for f in self.families)

    @property
    def failed(self) -> int:
        return sum(f.count for f in self.families if not f.passed)

    @property
    def max_ratio(self) -> float:
        return max((f.max_ratio for f in self.families), default=0.0)

    @property
    def max_ratio_exact(self) -> float:
        return max((f.max_ratio for f in self.families if f.exactness == "exact"), default=0.0)

    @property
    def invariance_tol(self) -> float:
        tol = INVARIANCE_TOL["eps" if any(f.exactness == "eps" for f in self.families) else "exact"]
        return max(tol, LOW_PRECISION_TOL.get(self.precision, tol))

    @property
    def invariance_ok(self) -> bool:
        """The direct check: a random group element of every family leaves the output alone.
        It catches what no gradient can (an op that rewrites θ in the forward pass)."""
        return self.invariance is None or self.invariance <= self.invariance_tol

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.invariance_ok

    def to_dict(self) -> dict:
        return {"checked": self.checked, "failed": self.failed, "max_ratio": self.max_ratio,
                "max_ratio_exact": self.max_ratio_exact, "probes": self.probes,
                "precision": str(self.precision).replace("torch.", ""),
                "invariance_rel_diff": self.invariance, "invariance_ok": self.invariance_ok,
                "families": [f.__dict__ for f in self.families]}


def flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        vals = out.values() if isinstance(out, dict) else out.to_tuple()
        return [t for v in vals for t in flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flat_outputs(v)]
    return []


def probe_model(model: nn.Module, seed: int = 0, lower_eps: bool = True, eps: float = 1e-12) -> nn.Module:
    """A float64 copy of ``model`` with perturbed (generic) parameters, in the same mode, every
    normalization ``eps`` lowered to ``eps``."""
    g = torch.Generator().manual_seed(seed)
    m = real_copy(model).double()
    with torch.no_grad():
        for p in m.parameters():
            scale = max(float(p.detach().std()) if p.numel() > 1 else 0.0, 0.05)
            # float32 draws (5x faster than float64 ones), added to the float64 parameter
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32), alpha=0.5 * scale)
    if lower_eps:
        for mod in m.modules():
            for attr in ("eps", "variance_epsilon"):
                if isinstance(getattr(mod, attr, None), float):
                    setattr(mod, attr, eps)
    return m


#: functional normalizations and the position of their ``eps`` argument
_NORM_EPS = {F.batch_norm: 7, F.layer_norm: 4, F.group_norm: 4, F.instance_norm: 7, F.rms_norm: 3,
             torch.batch_norm: 7, torch.layer_norm: 4, torch.group_norm: 4, torch.instance_norm: 7,
             torch.rms_norm: 3}


class _LowerEps(TorchFunctionMode):
    """Lowers the ``eps`` a model passes to a functional normalization (``F.batch_norm(...)``
    with its default 1e-5, ``F.layer_norm(x, s, w, b, 1e-6)``): module ``eps`` attributes are
    lowered on the copy, literals in ``forward`` only here."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        pos = _NORM_EPS.get(func)
        if pos is not None:
            if len(args) > pos:
                args = args[:pos] + (self.eps,) + args[pos + 1:]
            else:
                kwargs["eps"] = self.eps
        return func(*args, **kwargs)


class _PrecisionWatch(TorchFunctionMode):
    """Records the floating dtypes the float64 probe computes in: a model that casts to float32
    inside forward (``q.float()``) can only be checked to float32 precision."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
                self.dtypes.add(t.dtype)
        return out


def _probe(ann, model: nn.Module, seed: int, families, eps: float, watch: _PrecisionWatch | None = None):
    """One probe (θ, x, v) at normalization eps ``eps``: per family, per law, the ratio r, the
    violation |<∇h, g>| and whether g is live on the law's entries (None when the output does not
    depend on θ at this probe)."""
    m = probe_model(model, seed, eps=eps)
    m.train(ann.training)
    params = dict(m.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    args, kwargs = random_inputs(ann.example_inputs, ann.example_kwargs, seed)
    gen = torch.Generator().manual_seed(2000 + seed)
    torch.manual_seed(3000 + seed)  # dropout masks
    with _LowerEps(eps), (watch if watch is not None else contextlib.nullcontext()):
        out = m(*args, **kwargs)
    outs = [o for o in flat_outputs(out) if o.is_floating_point() and o.requires_grad]
    vs = _cotangent(outs, ann.head, gen)
    s = sum((o * v).sum() for o, v in zip(outs, vs))
    grads = torch.autograd.grad(s, list(trainable.values()), allow_unused=True)
    gd = {n: (gr if gr is not None else torch.zeros_like(p)) for (n, p), gr in zip(trainable.items(), grads)}
    theta = {n: p.detach() for n, p in params.items()}
    for n in theta:
        gd.setdefault(n, torch.zeros_like(theta[n]))
    gnorm = math.sqrt(sum(float(x.square().sum()) for x in gd.values()))
    if gnorm <= ROUNDOFF * gradient_scale(outs, vs, trainable.values()):
        return None  # the output does not depend on θ at this probe: it tests no law
    laws = {}
    with torch.no_grad():
        cache: dict = {}  # reductions and blocks shared by the families of this probe
        for f in families:
            d = f.directional(theta, gd, cache).abs()
            n1 = f.grad_norm(theta, cache)
            n2 = f.support_norm(gd, cache)
            live = n2 > LIVE * gnorm  # else the probe cannot see this law (dead unit, degenerate BN)
            r = torch.where(live, d / (n1 * n2).clamp_min(1e-300), torch.zeros_like(d))
            laws[f.name] = (r, d, live)
    return laws


def random_inputs(example: tuple, kwargs: dict | None, seed: int) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(1000 + seed)

    def rnd(x):
        if isinstance(x, torch.Tensor):
            if x.is_floating_point():
                return torch.randn(x.shape, generator=g, dtype=torch.float64) * (float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0)
            if x.dtype == torch.bool:
                return x.clone()
            hi = int(x.max()) + 1 if x.numel() else 1
            return torch.randint(0, max(hi, 2), x.shape, generator=g, dtype=x.dtype)
        return x

    return tuple(rnd(x) for x in example), {k: rnd(v) for k, v in (kwargs or {}).items()}


def _cotangent(outs: list[torch.Tensor], head: str | None, g: torch.Generator) -> list[torch.Tensor]:
    vs = []
    for o in outs:
        v = torch.randn(o.shape, generator=g, dtype=o.dtype)
        if head == "classification":
            v = v - v.mean(-1, keepdim=True)
        vs.append(v)
    return vs


def verify(ann, probes: int = 3, seed: int = 0, model: nn.Module | None = None,
           invariance: bool = True) -> VerifyReport:
    """Run the oracle on every law of ``ann`` (see module docstring)."""
    model = model if model is not None else ann.model
    if model is None:
        raise ValueError("verify needs the model (annotate was given none)")
    report = VerifyReport(probes=probes)
    watch = _PrecisionWatch()
    worst = {f.name: 0.0 for f in ann.families}
    untested = {f.name: 0 for f in ann.families}
    eps_of = {f.name: EPS_PROBE[0] for f in ann.families if f.exactness == "eps"}
    for k in range(probes):
        res = _probe(ann, model, seed + k, ann.families, EPS_PROBE[0], watch if k == 0 else None)
        if res is None:
            if k == probes - 1:
                untested = {f.name: f.count for f in ann.families}
            continue
        # eps → 0: eps-laws failing at eps = 1e-12 (a nearly dead channel whose variance is near
        # eps) are probed again, same θ, x and v, at eps = 1e-20. A law passes if its violation
        # |<∇h, g>| shrinks at least 1000-fold (an eps effect; a non-law's does not move), and
        # its ratio is reported extrapolated by that shrink factor.
        again = [f for f in ann.families if f.exactness == "eps" and _worst(res[f.name][0]) > EPS_TOL]
        limit = _probe(ann, model, seed + k, again, EPS_PROBE[1]) if again else None
        for f in ann.families:
            r, d, live = res[f.name]
            if limit is not None and f.name in limit:
                d2 = limit[f.name][1]
                shrink = torch.where(d > 0, d2 / d.clamp_min(1e-300), torch.zeros_like(d))
                r = torch.where(r > EPS_TOL, r * torch.where(shrink <= EPS_SHRINK, shrink, torch.ones_like(shrink)), r)
                eps_of[f.name] = EPS_PROBE[1]
            worst[f.name] = max(worst[f.name], _worst(r))
            if k == probes - 1:
                untested[f.name] = int((~live).sum())
    report.precision = max(watch.dtypes, key=lambda d: torch.finfo(d).eps, default=torch.float64)
    exact_tol = max(EXACT_TOL, LOW_PRECISION_TOL.get(report.precision, EXACT_TOL))
    for f in ann.families:
        tol = exact_tol if f.exactness == "exact" else EPS_TOL
        report.families.append(FamilyCheck(f.name, f.kind, f.exactness, f.count, worst[f.name],
                                           untested[f.name], worst[f.name] <= tol, eps_of.get(f.name)))
    if invariance:
        report.invariance = invariance_check(ann, model, seed)
    return report


def _worst(r: torch.Tensor) -> float:
    return float(r.max()) if r.numel() else 0.0


def random_group_element(ann, params: dict[str, torch.Tensor], gen: torch.Generator, t: float = 0.3) -> None:
    """Apply, in place, a random element of every family's symmetry group to ``params``."""
    for f in ann.families:
        if f.form == "diag":
            lam = torch.randn(f.count, generator=gen, dtype=torch.float64) * t
            for term in f.terms:
                p = params[term.param]
                _scale_slices(p, term, lam * term.coef)
        elif f.form == "linear":
            shift = torch.randn(f.count, generator=gen, dtype=torch.float64) * t
            for term in f.terms:
                _shift_slices(params[term.param], term, shift * term.coef)
        elif f.form == "gram":
            r = f.terms[0].index.shape[1]
            G = torch.eye(r, dtype=torch.float64) + t * torch.randn(f.blocks, r, r, generator=gen, dtype=torch.float64) / math.sqrt(r)
            for term in f.terms:
                p = params[term.param]
                M = torch.movedim(p, term.axis, 0)
                idx = torch.as_tensor(term.index)
                for b in range(f.blocks):
                    rows = M[idx[b]].reshape(r, -1)
                    T = G[b] if term.coef > 0 else torch.linalg.inv(G[b]).T
                    M[idx[b]] = (T @ rows).reshape(M[idx[b]].shape)


def _expand_reduced(p: torch.Tensor, term, vec: torch.Tensor) -> torch.Tensor:
    """Broadcast a vector over a term's reduced index space back to the parameter's shape."""
    red = term.reducer
    if red == "sq0":
        return vec.reshape((-1,) + (1,) * (p.dim() - 1)).expand(p.shape)
    if red == "sq1":
        out, ipg = p.shape[0], p.shape[1]
        m = vec.reshape(term.groups, ipg).repeat_interleave(out // term.groups, 0)
        return m.reshape(out, ipg, *([1] * (p.dim() - 2))).expand(p.shape)
    if red in ("sq", "entry"):
        return vec.reshape(p.shape)
    if red == "sum0":
        return vec.reshape(p.shape[1:]).unsqueeze(0).expand(p.shape)
    if red == "sum1":
        return vec.reshape(p.shape[0], *p.shape[2:]).unsqueeze(1).expand(p.shape)
    if red == "sumlast":
        return vec.reshape(p.shape[:-1]).unsqueeze(-1).expand(p.shape)
    if red == "total":
        return vec.reshape(()).expand(p.shape)
    raise ValueError(red)


def _per_slice(p: torch.Tensor, term, values: torch.Tensor) -> torch.Tensor:
    from .lawset import reduce_tensor

    size = reduce_tensor(torch.zeros_like(p), term.reducer, term.groups).numel()
    idx = torch.as_tensor(term.index)
    acc = torch.zeros(size, dtype=torch.float64)
    acc.index_add_(0, idx.reshape(-1), values.repeat_interleave(idx.shape[1]))
    return _expand_reduced(p, term, acc)


def _scale_slices(p: torch.Tensor, term, rates: torch.Tensor) -> None:
    p.mul_(torch.exp(_per_slice(p, term, rates) / 2))


def _shift_slices(p: torch.Tensor, term, shifts: torch.Tensor) -> None:
    p.add_(_per_slice(p, term, shifts))


def invariance_check(ann, model: nn.Module, seed: int = 0, max_laws: int = 20000) -> float | None:
    """Relative output change after a random group element of every family (eps lowered)."""
    if ann.total_laws > max_laws or ann.total_laws == 0:
        return None
    m = probe_model(model, seed)
    m.train(ann.training)
    args, kwargs = random_inputs(ann.example_inputs, ann.example_kwargs, seed)
    torch.manual_seed(7)
    with torch.no_grad(), _LowerEps(EPS_PROBE[0]):
        before = flat_outputs(m(*args, **kwargs))
        params = dict(m.named_parameters())
        random_group_element(ann, params, torch.Generator().manual_seed(seed + 99))
        torch.manual_seed(7)
        after = flat_outputs(m(*args, **kwargs))
    worst = 0.0
    for a, b in zip(before, after):
        if not a.is_floating_point():
            continue
        if ann.head == "classification":
            a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        worst = max(worst, float((a - b).norm() / a.norm().clamp_min(1e-300)))
    return worst
