"""Watch the conservation laws of a model while it trains (LAWS.md §4).

    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=5e-4)
    mon = fxcons.monitor(ann, opt)          # optimizer step hooks; the training loop is unchanged
    ... train ...
    rep = mon.report()                      # dict (+ rep.table, a rich Table); the only host sync
    mon.detach()

At every monitored step, per law family (all on the parameters' device, accumulated in device
tensors; nothing is read back before :meth:`Monitor.report` or :attr:`Monitor.history`):

* **orthogonality** of the gradient the optimizer is about to use (read in the step pre-hook,
  i.e. after any clipping): ``|<∇h(θ), g>| / (‖∇h(θ)‖ · ‖g on h's entries‖)``, max over the
  family's laws. An ``exact`` law above the tolerance is flagged (it is not a law of this model).
  A law whose gradient on its entries is below :func:`live_threshold` × ‖g‖ is *untested* at
  that step (its residual would be rounding noise / rounding noise, e.g. the attention key bias).
* **drift** since the first monitored step: ``|h(θ_k) − h(θ_0)| / mass``, where the mass is the
  same family with ``|coef|`` on squares (linear laws: on ``|θ|``) at θ_0, guarded by
  ``max(mass(θ_0), 1e-3·mass(θ_k))`` for laws that start at zero (zero-initialised biases).
  Laws whose gradient was never live (see above) are left out: their value is rounding noise
  around zero. Under SGD with per-group learning rates τ_p, ``h`` is the conserved
  ``h_T`` of LAWS.md §4: each term weighted by ``τ_ref / τ_p`` (τ_ref = largest lr at attach).
* **prediction** (torch.optim.SGD only): write the update as ``θ⁺ = Dθ − G g − B b`` per
  parameter (weight decay in D, learning rate in G, heavy-ball buffer b in B). Expanding the
  quadratic ``h_w(θ⁺)`` gives terms in ``h(θ), h(g), h(b)`` and cross terms; the one cross term
  ``<∇h(θ), g>`` is dropped (it is zero for a law). Plain SGD with one learning rate and
  weight decay λ: ``h(θ⁺) = (1 − τλ)² h(θ) + τ² h(g)`` (linear laws: ``(1 − τλ) h(θ)``);
  per-group rates: ``h_T(θ⁺) = h_T(θ) + ½ gᵀTAg``. With momentum the identity is the same
  expansion with ``g`` replaced by the step ``β b + g``: the measured momentum cross term
  ``<∇h(θ), b>`` is kept and only ``<∇h(θ), g>`` is dropped (the discrete form of the damped
  oscillator of Kunin et al., ICLR 2021). The error ``|h(θ⁺) − prediction| / mass`` and its
  sum over steps (``cumulative_error``) are recorded. Adam, AdamW and every other optimizer:
  drift only ("not predicted").

Laws are evaluated by two small functions built once from the law set (flat gather/scatter
arrays over every law) and compiled once with ``torch.compile`` (eager with a warning when
compilation fails; ``compile=False`` for eager).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import LawInputError
from .lawset import LawFamily, LawSet, reduce_tensor

STATS = ("orthogonality", "drift", "prediction_error", "cumulative_error", "untested")
TINY = 1e-30


def live_threshold(dtype: torch.dtype) -> float:
    """A law is *untested* at a step when ‖g on its entries‖ is below this fraction of the whole
    gradient's norm (its gradient is rounding noise, e.g. the attention key bias, whose gradient
    is exactly zero in exact arithmetic; the oracle of fxcons.verify uses 1e-7 in float64)."""
    return {torch.float64: 1e-7, torch.float32: 1e-6}.get(dtype, 1e-3)


def default_tolerance(dtype: torch.dtype, device: torch.device | None = None) -> float:
    """Orthogonality tolerance of an exact law for gradients computed in ``dtype``.

    float64: 1e-8; float32: 1e-4 (5e-3 on CUDA when TF32 convolutions/matmuls are enabled);
    half/bfloat16: 5e-2.
    """
    if dtype == torch.float64:
        return 1e-8
    if dtype == torch.float32:
        if device is not None and device.type == "cuda" and (
                torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32):
            return 5e-3
        return 1e-4
    return 5e-2


# ----------------------------------------------------------------------------- the plan

@dataclass
class _GramTerm:
    pid: int
    axis: int
    index: torch.Tensor  # (blocks, r)
    coef: float
    weight: float


class _Plan:
    """Every law as flat device arrays: ``diag`` and ``linear`` families as one gather/scatter
    over concatenated per-parameter reductions each, ``gram`` families one by one.

    Law order in the flat vectors: the diag laws, then the linear laws, then the gram laws;
    ``fam_of_law`` maps each position to its family (index into ``laws.families``).
    """

    def __init__(self, laws: LawSet, shapes: list[torch.Size], pid_of: dict[str, int],
                 weights: list[float], device: torch.device, dtype: torch.dtype, live: float = 1e-7) -> None:
        self.n_fam = len(laws.families)
        self.live2 = live * live
        self.dtype, self.device = dtype, device
        fam_of_law: list[int] = []
        self.diag = self._flat([(i, f) for i, f in enumerate(laws.families) if f.form == "diag"],
                               shapes, pid_of, weights, fam_of_law)
        self.lin = self._flat([(i, f) for i, f in enumerate(laws.families) if f.form == "linear"],
                              shapes, pid_of, weights, fam_of_law)
        self.gram: list[dict] = []
        for i, f in enumerate(laws.families):
            if f.form == "gram":
                self.gram.append(self._gram(f, pid_of, weights))
                fam_of_law += [i] * f.count
            elif f.form not in ("diag", "linear"):
                raise LawInputError(f"law family {f.name!r} has unknown form {f.form!r}")
        self.L = len(fam_of_law)
        self.fam_of_law = torch.as_tensor(np.asarray(fam_of_law, dtype=np.int64), device=device)
        if self.lin is not None:  # ‖∇h‖² of a linear law is a constant: Σ c² · (entries summed)
            one = torch.ones((), dtype=dtype, device=device)
            E = self._reduced(self.lin, lambda pid: one.expand(shapes[pid]))  # a view: no parameter-sized copy
            self.lin["gn2"] = self._scatter(self.lin, self.lin["c2"] * E)

    # -- construction
    def _flat(self, fams, shapes, pid_of, weights, fam_of_law) -> dict | None:
        if not fams:
            return None
        slots: dict[tuple[int, str, int], tuple[int, int]] = {}  # (pid, reducer, groups) -> (offset, size)
        total = 0
        gather, lawpos, coef, pids = [], [], [], []
        off = 0
        for fi, f in fams:
            n = f.blocks
            for t in f.terms:
                pid = pid_of[t.param]
                key = (pid, t.reducer, t.groups)
                if key not in slots:
                    size = reduce_tensor(torch.empty(shapes[pid], device="meta"), t.reducer, t.groups).numel()
                    slots[key] = (total, size)
                    total += size
                start, size = slots[key]
                idx = np.asarray(t.index, dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= size):
                    raise LawInputError(f"law family {f.name!r}: index out of range for {t.param} ({t.reducer})")
                k = idx.shape[1]
                gather.append(start + idx.reshape(-1))
                lawpos.append(off + np.repeat(np.arange(n), k))
                coef.append(np.full(n * k, t.coef))
                pids.append(np.full(n * k, pid))
            fam_of_law += [fi] * n
            off += n
        dev, dt = self.device, self.dtype
        pid = np.concatenate(pids)
        c = np.concatenate(coef)
        lawpos_np = np.concatenate(lawpos)
        by_pid: dict[int, list] = {}
        for p_, r_, g_ in slots:
            by_pid.setdefault(p_, []).append((r_, g_))
        plan = {
            "slots": list(slots), "n": off, "by_pid": list(by_pid.items()),
            "gather": torch.as_tensor(np.concatenate(gather), device=dev),
            "lawpos": torch.as_tensor(lawpos_np, device=dev),
            "pid": torch.as_tensor(pid, device=dev),
            "c": torch.as_tensor(c, dtype=dt, device=dev),
            "absc": torch.as_tensor(np.abs(c), dtype=dt, device=dev),
            "c2": torch.as_tensor(c * c, dtype=dt, device=dev),
            "w": torch.as_tensor(np.asarray(weights, dtype=np.float64)[pid], dtype=dt, device=dev),
            "per_law": torch.as_tensor(np.bincount(lawpos_np, minlength=off).clip(min=1), dtype=dt, device=dev),
        }
        return plan

    def _gram(self, f: LawFamily, pid_of, weights) -> dict:
        r = f.terms[0].index.shape[1]
        iu = torch.triu_indices(r, r, device=self.device)
        terms = [_GramTerm(pid_of[t.param], t.axis, torch.as_tensor(np.asarray(t.index, dtype=np.int64),
                                                                      device=self.device),
                           float(t.coef), float(weights[pid_of[t.param]])) for t in f.terms]
        return {"terms": terms, "a": iu[0], "b": iu[1], "diag": (iu[0] == iu[1]).to(self.dtype),
                "count": f.count}

    # -- evaluation helpers (pure tensor code: compiled)
    def _reduced(self, P: dict, elem: Callable[[int], torch.Tensor], totals: dict | None = None) -> torch.Tensor:
        """Per element of the flat plan: the reduction its term reads, e.g. Σ_row θ·g.

        ``elem(pid)`` is computed once per parameter (in the parameter's dtype) and every
        reduction is accumulated in the plan's dtype; ``totals[pid]`` receives its full sum."""
        out: dict = {}
        for pid, reds in P["by_pid"]:
            red = _reduce_many(elem(pid), reds, self.dtype)
            out.update({(pid, r, g): v for (r, g), v in red.items()})
            if totals is not None:
                totals[pid] = next(iter(red.values())).sum()
        R = torch.cat([out[k] for k in P["slots"]])
        return R[P["gather"]]

    def _scatter(self, P: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(P["n"], dtype=x.dtype, device=x.device).index_add_(0, P["lawpos"], x)

    def family_max(self, per_law: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.n_fam, dtype=per_law.dtype, device=per_law.device)
        return out.scatter_reduce(0, self.fam_of_law, per_law, "amax", include_self=True)

    # -- the two kernels
    def pre(self, thetas: list, grads: list, bufs: list | None, opt: torch.Tensor | None):
        """Before a step: ((families, 2) orthogonality and untested count, h_w(θ), mass_w(θ),
        prediction of h_w(θ⁺) or None)."""
        dt = self.dtype
        T, Gr = _elementwise(thetas), _elementwise(grads)
        Bf = _elementwise(bufs) if bufs is not None else None
        V, M, dirs, gn2, sn2, preds = [], [], [], [], [], []
        gsq: dict[int, torch.Tensor] = {}
        P = self.diag
        if P is not None:
            Ett = self._reduced(P, lambda i: T[i] * T[i])
            Etg = self._reduced(P, lambda i: T[i] * Gr[i])
            Egg = self._reduced(P, lambda i: Gr[i] * Gr[i], gsq)
            V.append(self._scatter(P, P["c"] * P["w"] * Ett))
            M.append(self._scatter(P, P["absc"] * P["w"] * Ett))
            dirs.append(self._scatter(P, 2 * P["c"] * Etg))
            gn2.append(self._scatter(P, 4 * P["c2"] * Ett))
            sn2.append(self._scatter(P, Egg))
            if opt is not None:
                D, G, B = opt[P["pid"], 0], opt[P["pid"], 1], opt[P["pid"], 2]
                k = P["w"] * D * G
                cbar = self._scatter(P, k) / P["per_law"]
                q = P["w"] * (D * D * Ett + G * G * Egg) - (k - cbar[P["lawpos"]]) * 2 * Etg
                if Bf is not None:
                    Etb = self._reduced(P, lambda i: T[i] * Bf[i])
                    Ebb = self._reduced(P, lambda i: Bf[i] * Bf[i])
                    Egb = self._reduced(P, lambda i: Gr[i] * Bf[i])
                    q = q + P["w"] * (B * B * Ebb + 2 * G * B * Egb - 2 * D * B * Etb)
                preds.append(self._scatter(P, P["c"] * q))
        P = self.lin
        if P is not None:
            Et = self._reduced(P, lambda i: T[i])
            Eg = self._reduced(P, lambda i: Gr[i])
            V.append(self._scatter(P, P["c"] * P["w"] * Et))
            M.append(self._scatter(P, P["absc"] * P["w"] * self._reduced(P, lambda i: T[i].abs())))
            dirs.append(self._scatter(P, P["c"] * Eg))
            gn2.append(P["gn2"])
            sn2.append(self._scatter(P, self._reduced(P, lambda i: Gr[i] * Gr[i])))
            if opt is not None:
                D, G, B = opt[P["pid"], 0], opt[P["pid"], 1], opt[P["pid"], 2]
                k = P["w"] * G
                cbar = self._scatter(P, k) / P["per_law"]
                q = P["w"] * D * Et - (k - cbar[P["lawpos"]]) * Eg
                if Bf is not None:
                    q = q - P["w"] * B * self._reduced(P, lambda i: Bf[i])
                preds.append(self._scatter(P, P["c"] * q))
        for F in self.gram:
            v, m, d, n2, s2, pr = self._gram_pre(F, T, Gr, Bf, opt)
            V.append(v), M.append(m), dirs.append(d), gn2.append(n2), sn2.append(s2)
            if pr is not None:
                preds.append(pr)
        V, M, dirs, gn2, sn2 = (torch.cat(x) for x in (V, M, dirs, gn2, sn2))
        den = (gn2 * sn2).sqrt()
        gall2 = sum(gsq[i] if i in gsq else g.square().sum(dtype=dt) for i, g in enumerate(Gr))
        live = (sn2 > self.live2 * gall2) & (den > 0)
        r = torch.where(live, dirs.abs() / den.clamp_min(TINY), torch.zeros_like(den))
        dead = torch.zeros(self.n_fam, dtype=dt, device=r.device).index_add_(0, self.fam_of_law, (~live).to(dt))
        pred = torch.cat(preds) if opt is not None else None
        return torch.stack([self.family_max(r), dead], 1), V, M, pred, live.to(dt)

    def _gram_pre(self, F, T, Gr, Bf, opt):
        a, b, dg = F["a"], F["b"], F["diag"]
        V = M = d = n2 = s2 = pr = None
        ks, parts = [], []
        for t in F["terms"]:
            def blocks(x):
                X = torch.movedim(x, t.axis, 0)[t.index].to(self.dtype)
                return X.reshape(X.shape[0], X.shape[1], -1)

            Mt, Gt = blocks(T[t.pid]), blocks(Gr[t.pid])
            tt = Mt @ Mt.transpose(1, 2)
            gm = Gt @ Mt.transpose(1, 2)
            tg2 = gm + gm.transpose(1, 2)  # 2·sym(g θᵀ)
            gg = Gt @ Gt.transpose(1, 2)
            up = lambda X: X[:, a, b].reshape(-1)  # noqa: E731
            Dtt = torch.diagonal(tt, dim1=1, dim2=2)
            Dgg = torch.diagonal(gg, dim1=1, dim2=2)
            ntt = (Dtt[:, a] + Dtt[:, b]) * (1 - dg) + 4 * Dtt[:, a] * dg
            ngg = (Dgg[:, a] + Dgg[:, b]) * (1 - dg) + Dgg[:, a] * dg
            mass = 0.5 * (Dtt[:, a] + Dtt[:, b])
            c, w = t.coef, t.weight
            terms = [c * w * up(tt), abs(c) * w * mass.reshape(-1), c * up(tg2), c * c * ntt.reshape(-1),
                     ngg.reshape(-1)]
            V, M, d, n2, s2 = (x if acc is None else acc + x for acc, x in zip((V, M, d, n2, s2), terms))
            if opt is not None:
                D, G, B = opt[t.pid, 0], opt[t.pid, 1], opt[t.pid, 2]
                q = w * (D * D * up(tt) + G * G * up(gg))
                if Bf is not None:
                    Bt = blocks(Bf[t.pid])
                    bm = Bt @ Mt.transpose(1, 2)
                    gb = Gt @ Bt.transpose(1, 2)
                    q = q + w * (B * B * up(Bt @ Bt.transpose(1, 2)) + G * B * up(gb + gb.transpose(1, 2))
                                 - D * B * up(bm + bm.transpose(1, 2)))
                ks.append(w * D * G)
                parts.append((c, q, up(tg2)))
        if opt is not None:
            kv = torch.stack(ks)
            cbar = kv.mean()
            pr = sum(c * (q - (k - cbar) * tg) for (c, q, tg), k in zip(parts, kv))
        return V, M, d, n2, s2, pr

    def values(self, thetas: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_w(θ), mass_w(θ)) for every law."""
        T = _elementwise(thetas)
        V, M = [], []
        P = self.diag
        if P is not None:
            Ett = self._reduced(P, lambda i: T[i] * T[i])
            V.append(self._scatter(P, P["c"] * P["w"] * Ett))
            M.append(self._scatter(P, P["absc"] * P["w"] * Ett))
        P = self.lin
        if P is not None:
            V.append(self._scatter(P, P["c"] * P["w"] * self._reduced(P, lambda i: T[i])))
            M.append(self._scatter(P, P["absc"] * P["w"] * self._reduced(P, lambda i: T[i].abs())))
        for F in self.gram:
            a, b = F["a"], F["b"]
            v = m = None
            for t in F["terms"]:
                X = torch.movedim(T[t.pid], t.axis, 0)[t.index].to(self.dtype)
                X = X.reshape(X.shape[0], X.shape[1], -1)
                tt = X @ X.transpose(1, 2)
                Dtt = torch.diagonal(tt, dim1=1, dim2=2)
                vv = t.coef * t.weight * tt[:, a, b].reshape(-1)
                mm = abs(t.coef) * t.weight * (0.5 * (Dtt[:, a] + Dtt[:, b])).reshape(-1)
                v, m = (vv, mm) if v is None else (v + vv, m + mm)
            V.append(v), M.append(m)
        return torch.cat(V), torch.cat(M)

    def post(self, thetas: list, h0, m0, vpre, pred, cum, orth, live, ever):
        """After a step: the stats row (families × STATS), the updated cumulative prediction and
        the laws seen live so far. Drift and prediction errors count only laws whose gradient was
        live at some monitored step: a law on entries that never received more than rounding
        noise (a zero-initialised attention key bias) has no meaningful relative drift."""
        V, M = self.values(thetas)
        ever = torch.maximum(ever, live)
        on = ever > 0
        zero = torch.zeros_like(V)
        den0 = torch.maximum(m0, 1e-3 * M).clamp_min(TINY)
        drift = torch.where(on, (V - h0).abs() / den0, zero)
        if pred is None:
            nan = torch.full((self.n_fam,), float("nan"), dtype=V.dtype, device=V.device)
            row = torch.stack([orth[:, 0], self.family_max(drift), nan, nan, orth[:, 1]], 1)
            return row, cum, ever
        err = torch.where(on, (V - pred).abs() / M.clamp_min(TINY), zero)
        cum = cum + (pred - vpre)
        cerr = torch.where(on, (V - h0 - cum).abs() / den0, zero)
        row = torch.stack([orth[:, 0], self.family_max(drift), self.family_max(err), self.family_max(cerr),
                           orth[:, 1]], 1)
        return row, cum, ever


def _elementwise(xs: list) -> list:
    """Detached tensors in a dtype fit for elementwise products (float32 or float64)."""
    return [x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().float() for x in xs]


def _reduce_many(x: torch.Tensor, reds: list[tuple[str, int]], acc: torch.dtype) -> dict:
    """Several reductions of one elementwise-mapped parameter (see lawset.reduce_tensor),
    accumulated in ``acc``; the row sums (sq0) and column sums (sq1) of a matrix share one pass."""
    out = {}
    q = None
    for red, groups in reds:
        if red in ("sq0", "sq1") and x.dim() >= 2:
            if q is None:  # (out, in per group); the few kernel taps summed in x's dtype (vectorises)
                q = x.reshape(x.shape[0], x.shape[1], -1).sum(2).to(acc)
            if red == "sq0":
                out[(red, groups)] = q.sum(1)
            else:
                out[(red, groups)] = q.reshape(groups, q.shape[0] // groups, q.shape[1]).sum(1).reshape(-1)
        elif red in ("sq0", "sq1", "sq", "entry"):
            out[(red, groups)] = x.reshape(-1).to(acc)
        elif red == "sum0":
            out[(red, groups)] = x.sum(0, dtype=acc).reshape(-1)
        elif red == "sum1":
            out[(red, groups)] = x.sum(1, dtype=acc).reshape(-1)
        elif red == "sumlast":
            out[(red, groups)] = x.sum(-1, dtype=acc).reshape(-1)
        elif red == "total":
            out[(red, groups)] = x.sum(dtype=acc).reshape(1)
        else:
            raise ValueError(f"unknown reducer {red}")
    return out


# ----------------------------------------------------------------------------- optimizer

def _sgd_row(group: dict, state: dict, p: torch.Tensor) -> tuple[Any, Any, Any, bool]:
    """(D, G, B, has_buffer) of torch.optim.SGD's update θ⁺ = Dθ − G·grad − B·buffer. A tensor
    learning rate or weight decay (``lr=torch.tensor(...)``, the capturable pattern) stays a
    tensor: reading it back would synchronise with the device at every step."""
    lr = group["lr"]
    wd = group.get("weight_decay", 0.0)
    mom = float(group.get("momentum", 0.0))
    damp = float(group.get("dampening", 0.0))
    sign = -1.0 if group.get("maximize", False) else 1.0
    buf = state.get("momentum_buffer") if mom != 0 else None
    if mom == 0:
        a, m = 1.0, 0.0
    elif group.get("nesterov", False):
        a, m = (1.0 + mom, 0.0) if buf is None else (1.0 + mom * (1 - damp), mom * mom)
    else:
        a, m = (1.0, 0.0) if buf is None else (1.0 - damp, mom)
    return 1.0 - lr * a * wd, lr * a * sign, lr * m, buf is not None


def _num(x: Any) -> float:
    return float(x.detach().cpu()) if isinstance(x, torch.Tensor) else float(x)


def _optimizer_kind(opt: torch.optim.Optimizer) -> str:
    if type(opt) is torch.optim.SGD or (isinstance(opt, torch.optim.SGD)
                                        and type(opt).step is torch.optim.SGD.step):
        if any(g.get("momentum", 0) for g in opt.param_groups):
            return "sgd-momentum"
        return "sgd"
    return type(opt).__name__.lower()


# ----------------------------------------------------------------------------- the monitor

class MonitorReport(dict):
    """The report as a dict (JSON-ready); ``.table`` is a rich Table of the worst values."""

    table: Any = None

    def __rich__(self):
        return self.table


class Monitor:
    """Law monitor attached to an optimizer through its step hooks (see module docstring)."""

    def __init__(self, annotation, optimizer: torch.optim.Optimizer, every: int = 1, *, compile: bool = True,
                 model: nn.Module | None = None, tolerance: float | None = None,
                 dtype: torch.dtype | None = None) -> None:
        laws: LawSet = annotation if isinstance(annotation, LawSet) else annotation.laws
        model = model if model is not None else getattr(annotation, "model", None)
        if model is None:
            raise LawInputError("monitor needs the model: pass an Annotation or model=...")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.laws, self.optimizer, self.every = laws, optimizer, int(every)
        self.families = list(laws.families)
        self.kind = _optimizer_kind(optimizer)
        self.predicts = self.kind in ("sgd", "sgd-momentum")

        named = dict(model.named_parameters(remove_duplicate=False))
        self.tensors: list[torch.Tensor] = []
        self.pid_of: dict[str, int] = {}
        by_id: dict[int, int] = {}
        for name in laws.params():
            if name not in named:
                raise LawInputError(f"law parameter {name!r} is not a parameter of the model")
            p = named[name]
            if id(p) not in by_id:  # tied parameters: one tensor, several names
                by_id[id(p)] = len(self.tensors)
                self.tensors.append(p)
            self.pid_of[name] = by_id[id(p)]
        if not self.tensors:
            raise LawInputError("the law set has no laws to monitor")
        devices = {p.device for p in self.tensors}
        if len(devices) > 1:
            raise LawInputError(f"law parameters live on several devices {sorted(map(str, devices))}")
        self.device = self.tensors[0].device
        self.param_dtype = self.tensors[0].dtype
        if dtype is None:
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.dtype = dtype
        self.tolerance = tolerance if tolerance is not None else default_tolerance(self.param_dtype, self.device)

        group_of: dict[int, int] = {}
        for gi, g in enumerate(optimizer.param_groups):
            for p in g["params"]:
                group_of[id(p)] = gi
        self.group_of = [group_of.get(id(p)) for p in self.tensors]
        self.not_optimized = sorted(n for n, i in self.pid_of.items() if self.group_of[i] is None)
        lrs = [_num(optimizer.param_groups[g]["lr"]) if g is not None else 0.0 for g in self.group_of]
        ref = max(lrs) if lrs else 0.0
        if self.predicts:  # h_T: each term divided by its own learning rate (LAWS.md §4)
            self.weights = [ref / lr if lr > 0 else 1.0 for lr in lrs]
        else:
            self.weights = [1.0] * len(self.tensors)
        frozen = {i for i, lr in enumerate(lrs) if lr <= 0}
        self.unpredictable = {fi for fi, f in enumerate(self.families)
                              if any(self.pid_of[t.param] in frozen for t in f.terms)}
        if self.unpredictable:
            warnings.warn(f"{len(self.unpredictable)} law families use parameters the optimizer does not "
                          f"update (e.g. {(self.not_optimized or ['lr=0'])[0]}): their prediction is not "
                          "meaningful and their drift uses unit weights", stacklevel=3)

        self.live = live_threshold(self.param_dtype)
        self.plan = _Plan(laws, [p.shape for p in self.tensors], self.pid_of, self.weights, self.device, dtype,
                          self.live)
        self.compile = bool(compile)
        self._compiled: dict[str, Callable] = {}
        self._zeros: dict[int, torch.Tensor] = {}
        self._opt_key: tuple | None = None
        self._opt_tensor: torch.Tensor | None = None
        self._step = 0
        self._monitored = False
        self._steps: list[int] = []
        self._rows: list[torch.Tensor] = []
        self._chunks: list[torch.Tensor] = []
        self._h0 = self._m0 = self._cum = self._ever = None
        self._pending: tuple | None = None
        self._warned_closure = False
        self._closure_seen = False
        self.unchecked: set[int] = set()  # families with a parameter frozen after attach
        self._frozen_seen: set[int] = set()
        self.compile_error: str | None = None
        self.hook_seconds = 0.0  # host time spent in the hooks (on CUDA the kernels run asynchronously)
        self._handles: list = []
        self.attach()

    # -- kernels
    def _run(self, name: str, fn: Callable, *args):
        if self.compile:
            f = self._compiled.get(name)
            if f is None:
                f = self._compiled[name] = torch.compile(fn, dynamic=False)
            try:
                return f(*args)
            except Exception as e:  # noqa: BLE001 - any backend failure: fall back to eager
                self.compile = False
                self.compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                warnings.warn(f"fxcons.monitor: torch.compile failed ({self.compile_error}); "
                              "evaluating the laws eagerly", stacklevel=3)
        return fn(*args)

    def _grad(self, pid: int) -> torch.Tensor:
        g = self.tensors[pid].grad
        if g is None:
            g = self._zeros.get(pid)
            if g is None:
                g = self._zeros[pid] = torch.zeros_like(self.tensors[pid])
        return g

    def _opt_rows(self):
        """Per law parameter (D, G, B) of this step, as a device tensor (rebuilt only on change)."""
        rows, has_buf = [], False
        for pid, p in enumerate(self.tensors):
            gi = self.group_of[pid]
            if gi is None or p.grad is None:
                rows.append((1.0, 0.0, 0.0))
                continue
            D, G, B, hb = _sgd_row(self.optimizer.param_groups[gi], self.optimizer.state.get(p, {}), p)
            has_buf |= hb
            rows.append((D, G, B))
        key = tuple(tuple((id(v), v._version) if isinstance(v, torch.Tensor) else v for v in r) for r in rows)
        if key != self._opt_key:
            if any(isinstance(v, torch.Tensor) for r in rows for v in r):
                t = torch.stack([torch.stack([self._on_device(v) for v in r]) for r in rows])
            else:
                t = torch.tensor(rows, dtype=self.dtype)
                if self.device.type == "cuda":
                    t = t.pin_memory().to(self.device, non_blocking=True)
                else:
                    t = t.to(self.device)
            self._opt_key, self._opt_tensor = key, t
        return self._opt_tensor, has_buf

    def _on_device(self, v: Any) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v.detach().to(self.device, self.dtype).reshape(())
        return torch.full((), float(v), dtype=self.dtype, device=self.device)

    def _buffers(self) -> list[torch.Tensor]:
        out = []
        for pid, p in enumerate(self.tensors):
            b = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if b is None or self.group_of[pid] is None or p.grad is None:
                b = torch.zeros_like(p)  # first step (its coefficient B is 0); not kept
            out.append(b)
        return out

    # -- hooks (run eagerly even inside a compiled training step)
    @torch._dynamo.disable
    def _pre_hook(self, optimizer, args, kwargs) -> None:
        self._monitored = self._step % self.every == 0
        if not self._monitored:
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            self._pre(args, kwargs)
        self.hook_seconds += time.perf_counter() - t0

    def _pre(self, args, kwargs) -> None:
        closure = (args[1] if len(args) > 1 else None) or kwargs.get("closure")
        if closure is not None:  # the gradient is computed inside step(): nothing to check here
            self._closure_seen = True
            if not self._warned_closure:
                warnings.warn("fxcons.monitor: optimizer.step(closure) computes the gradient inside the "
                              "step; orthogonality and prediction are skipped, drift is recorded",
                              stacklevel=3)
                self._warned_closure = True
            if self._h0 is None:
                self._start(*self._run("values", self.plan.values, self.tensors))
            nan = torch.full((self.plan.n_fam, 2), float("nan"), dtype=self.dtype, device=self.device)
            self._pending = (nan, None, None, torch.ones_like(self._ever))  # liveness unknown: count all
            return
        self._note_frozen()
        grads = [self._grad(i) for i in range(len(self.tensors))]
        if self.predicts:
            opt, has_buf = self._opt_rows()
            momentum = has_buf or self.kind == "sgd-momentum"  # one compiled variant from the first step on
            bufs = self._buffers() if momentum else None
            name = "pre_mom" if momentum else "pre_sgd"
        else:
            opt, bufs, name = None, None, "pre_drift"
        orth, V, M, pred, live = self._run(name, self.plan.pre, self.tensors, grads, bufs, opt)
        if self._h0 is None:
            self._start(V, M)
        self._pending = (orth, V, pred, live)

    def _note_frozen(self) -> None:
        """A parameter frozen after attach (``requires_grad_(False)``) gets no gradient, although
        the loss depends on it: the laws through it are laws of the model, but not of this run,
        and their orthogonality cannot be read from the zero gradient (like an lr = 0 group)."""
        frozen = {pid for pid, p in enumerate(self.tensors) if not p.requires_grad}
        if frozen <= self._frozen_seen:
            return
        self._frozen_seen |= frozen
        hit = {fi for fi, f in enumerate(self.families) if any(self.pid_of[t.param] in frozen for t in f.terms)}
        self.unchecked |= hit
        self.unpredictable |= hit
        names = sorted(n for n, pid in self.pid_of.items() if pid in frozen)
        warnings.warn(f"fxcons.monitor: {', '.join(names[:3])} stopped requiring gradients: the "
                      f"{len(hit)} law families through it are not checked or predicted from now on",
                      stacklevel=4)

    def _start(self, V: torch.Tensor, M: torch.Tensor) -> None:
        self._h0, self._m0 = V.clone(), M.clone()
        self._cum = torch.zeros_like(V)
        self._ever = torch.zeros_like(V)

    @torch._dynamo.disable
    def _post_hook(self, optimizer, args, kwargs) -> None:
        step = self._step
        self._step += 1
        if not self._monitored or self._pending is None:
            return
        orth, vpre, pred, live = self._pending
        self._pending = None
        name = "post_pred" if pred is not None else "post_drift"
        t0 = time.perf_counter()
        with torch.no_grad():
            row, self._cum, self._ever = self._run(name, self.plan.post, self.tensors, self._h0, self._m0, vpre,
                                                   pred, self._cum, orth, live, self._ever)
        self.hook_seconds += time.perf_counter() - t0
        self._steps.append(step)
        self._rows.append(row)
        if len(self._rows) >= 512:
            self._chunks.append(torch.stack(self._rows))
            self._rows = []

    # -- results
    def _table(self) -> np.ndarray:
        parts = list(self._chunks)
        if self._rows:
            parts.append(torch.stack(self._rows))
        if not parts:
            return np.zeros((0, self.plan.n_fam, len(STATS)))
        return torch.cat(parts).to("cpu", torch.float64).numpy()

    @property
    def history(self) -> dict[str, Any]:
        """Time series (host copy; syncs): ``step`` (S,), and per stat an (S, families) array."""
        rows = self._table()
        out: dict[str, Any] = {"step": np.asarray(self._steps[:len(rows)], dtype=np.int64),
                               "families": [f.name for f in self.families],
                               "exactness": [f.exactness for f in self.families]}
        for i, s in enumerate(STATS):
            out[s] = rows[:, :, i]
        if self.every > 1:  # increments of unmonitored steps are missing
            out["cumulative_error"] = np.full_like(out["cumulative_error"], np.nan)
        return out

    def latest(self) -> dict[str, float | None]:
        """The last monitored step's worst values (one small host copy; for live displays)."""
        row = self._rows[-1] if self._rows else (self._chunks[-1][-1] if self._chunks else None)
        if row is None:
            return {"orthogonality": None, "drift": None, "prediction_error": None}
        r = row.to("cpu", torch.float64).numpy()
        exact = np.array([f.exactness == "exact" for f in self.families])
        return {"orthogonality": _nanmax(r[exact, 0]) if exact.any() else None,
                "drift": _nanmax(r[:, 1]), "prediction_error": _nanmax(r[:, 2])}

    def report(self, max_rows: int = 40) -> MonitorReport:
        """Worst values per family and overall (syncs).

        Overall keys: ``orthogonality_max``, ``prediction_rel_error_max`` and
        ``cumulative_error_max`` are over the *exact* laws (the identities of LAWS.md §4 hold for
        them up to rounding); the ``*_eps`` keys are the same over eps-laws (normalizations), which
        obey them only up to an eps term. ``drift_max`` is over every law. ``ok`` is False when an
        exact law's orthogonality residual exceeded the tolerance (``flagged`` lists the families).
        ``.table`` is a rich Table of the worst values per family."""
        rows = self._table()
        S = rows.shape[0]
        predicts = self.predicts and not self._closure_seen
        fams = []
        for fi, f in enumerate(self.families):
            col = rows[:, fi, :] if S else np.full((1, len(STATS)), np.nan)
            mx = [_nanmax(col[:, k]) for k in range(len(STATS))]
            if fi in self.unchecked:
                mx[0] = None
            predicted = predicts and fi not in self.unpredictable
            fams.append({
                "name": f.name, "kind": f.kind, "exactness": f.exactness, "laws": f.count,
                "orthogonality_max": mx[0], "drift_max": mx[1], "drift_final": _last(col[:, 1]),
                "prediction_rel_error_max": mx[2] if predicted else None,
                "cumulative_error_max": mx[3] if predicted and self.every == 1 else None,
                "untested_final": int(col[-1, 4]) if S and not np.isnan(col[-1, 4]) else None,
                "flagged": bool(f.exactness == "exact" and mx[0] is not None and mx[0] > self.tolerance),
            })

        def worst(key, exactness=None, predicted_only=False):
            vals = [d[key] for fi, d in enumerate(fams) if d[key] is not None
                    and (exactness is None or d["exactness"] == exactness)
                    and (not predicted_only or fi not in self.unpredictable)]
            return max(vals) if vals else None

        flagged = [d["name"] for d in fams if d["flagged"]]
        rep = MonitorReport(
            optimizer=self.kind,
            prediction=("exact one-step identity (LAWS.md §4" + (", momentum cross term measured)"
                                                                 if self.kind == "sgd-momentum" else ")"))
            if predicts else ("not predicted (step(closure): the gradient is computed inside the step)"
                              if self._closure_seen else f"not predicted ({self.kind}: drift only)"),
            steps=S, every=self.every, families_count=len(fams), laws=self.laws.total,
            tolerance=self.tolerance, compiled=self.compile and bool(self._compiled),
            orthogonality_max=worst("orthogonality_max", "exact"),
            orthogonality_max_eps=worst("orthogonality_max", "eps"),
            prediction_rel_error_max=worst("prediction_rel_error_max", "exact", True) if predicts else None,
            prediction_rel_error_max_eps=worst("prediction_rel_error_max", "eps", True) if predicts else None,
            cumulative_error_max=worst("cumulative_error_max", "exact", True) if predicts else None,
            cumulative_error_max_eps=worst("cumulative_error_max", "eps", True) if predicts else None,
            drift_max=worst("drift_max"), drift_max_exact=worst("drift_max", "exact"),
            drift_final=worst("drift_final"),
            untested_final=sum(d["untested_final"] or 0 for d in fams),
            flagged=flagged, ok=not flagged, families=fams,
        )
        if self.compile_error:
            rep["compile_error"] = self.compile_error
        rep.table = self._rich_table(rep, max_rows)
        return rep

    def _rich_table(self, rep: dict, max_rows: int):
        from rich.table import Table

        t = Table(title=f"conservation laws under {rep['optimizer']} ({rep['steps']} monitored steps; "
                        f"tolerance {rep['tolerance']:.0e})", show_lines=False)
        for col, just in (("family", "left"), ("kind", "left"), ("laws", "right"), ("orthogonality", "right"),
                          ("drift max", "right"), ("drift final", "right"), ("pred. error", "right"),
                          ("", "left")):
            t.add_column(col, justify=just)
        order = sorted(rep["families"], key=lambda d: (not d["flagged"], -(d["drift_max"] or 0)))
        for d in order[:max_rows]:
            t.add_row(d["name"], d["kind"] + ("" if d["exactness"] == "exact" else " (eps)"), str(d["laws"]),
                      _fmt(d["orthogonality_max"]), _fmt(d["drift_max"]), _fmt(d["drift_final"]),
                      _fmt(d["prediction_rel_error_max"]) if d["prediction_rel_error_max"] is not None else "—",
                      "[bold red]NOT A LAW[/]" if d["flagged"] else "")
        if len(order) > max_rows:
            t.add_row(f"… {len(order) - max_rows} more", "", "", "", "", "", "", "")
        return t

    def attach(self) -> "Monitor":
        """(Re-)register the optimizer step hooks (done by the constructor)."""
        if not self._handles:
            self._handles = [self.optimizer.register_step_pre_hook(self._pre_hook),
                             self.optimizer.register_step_post_hook(self._post_hook)]
        return self

    def detach(self) -> None:
        """Remove the optimizer hooks (the recorded history stays; :meth:`attach` resumes)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def _nanmax(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.max()) if x.size else None


def _last(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x[-1]) if x.size else None


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.2e}"


def monitor(annotation, optimizer: torch.optim.Optimizer, every: int = 1, **kw: Any) -> Monitor:
    """Attach a law monitor to ``optimizer`` (see :class:`Monitor`); returns the Monitor."""
    return Monitor(annotation, optimizer, every, **kw)
