"""fxcons.monitor: the discrete-time identities of LAWS.md §4, checked to float64 precision
against an independent evaluation (LawFamily.evaluate), on every family form (diag from the
engine, gram from the engine and by hand, linear), with weight decay, per-group learning rates,
gradient clipping, momentum, Adam (drift only), a deliberately wrong law, and one compiled
training step on CPU."""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxcons
from fxcons.lawset import LawFamily, LawSet, Term
from fxcons.monitor import Monitor, MonitorReport, default_tolerance

torch.set_num_threads(1)


def relu_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4)).double()
    return m, torch.randn(32, 6, dtype=torch.float64)


def linear_mlp():
    """y = W2 (W1 x + b1) + b2 with a width-3 bottleneck: GL(3) gram laws."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 4)).double()
    return m, torch.randn(32, 5, dtype=torch.float64)


def bottleneck_gram(prefix=""):
    """H = [W1 b1][W1 b1]ᵀ − W2ᵀW2 (LAWS.md §3.2), written by hand as one gram family."""
    idx = np.arange(3)[None]
    return LawFamily("hand gl[6]", "gl", "exact", "gram",
                     [Term(f"{prefix}0.weight", "gram", 1.0, idx, axis=0),
                      Term(f"{prefix}0.bias", "gram", 1.0, idx, axis=0),
                      Term(f"{prefix}1.weight", "gram", -1.0, idx, axis=1)])


def head_translation(prefix="", last="4"):
    """Column sums of the logits layer and the sum of its bias (softmax head, LAWS.md §3.5)."""
    return [LawFamily("hand colsum", "translation", "exact", "linear",
                      [Term(f"{prefix}{last}.weight", "sum0", 1.0, np.arange(10)[:, None])]),
            LawFamily("hand biassum", "translation", "exact", "linear",
                      [Term(f"{prefix}{last}.bias", "total", 1.0, np.zeros((1, 1), dtype=np.int64))])]


def train(model, x, opt, steps=6, clip=None, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (x.shape[0],), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        i = torch.randperm(x.shape[0], generator=g)[:16]
        F.cross_entropy(model(x[i]), y[i]).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def scaled(fam: LawFamily, factor) -> LawFamily:
    """The family with each term's coefficient multiplied by factor(param)."""
    f = copy.deepcopy(fam)
    for t in f.terms:
        t.coef = t.coef * factor(t.param)
    return f


def reference_step(model, fams, x, y, opt, lr_of, decay_of, clip=None):
    """One SGD step; returns per family (h_w(θ⁺), d²·h_w(θ) + h_w(T g)) computed with
    LawFamily.evaluate only (w = 1/τ_p: the learning-rate-weighted law h_T)."""
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    P = {n: p.detach().clone() for n, p in model.named_parameters()}
    G = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    TG = {n: lr_of(n) * G[n] for n in G}
    opt.step()
    Pn = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = []
    for f in fams:
        fw = scaled(f, lambda n: 1 / lr_of(n))
        d = {1 - lr_of(t.param) * decay_of(t.param) for t in f.terms}
        assert len(d) == 1
        d = d.pop()
        if f.form == "linear":
            pred = d * fw.evaluate(P)  # <c, g> = 0: linear laws only shrink by (1 - τλ)
        else:
            pred = d * d * fw.evaluate(P) + fw.evaluate(TG)
        out.append((fw.evaluate(Pn), pred, fw.evaluate(P)))
    return out


# ----------------------------------------------------------------------------- the identities

@pytest.mark.parametrize("kind", ["diag+linear (engine)", "gram (engine)", "gram+linear (hand-built)"])
def test_sgd_identity_every_form_float64(kind):
    """h_T(θ⁺) = (1 − τλ)² h_T(θ) + ½gᵀTAg (quadratic), (1 − τλ) h_T(θ) (linear), to 1e-13,
    with weight decay and two learning-rate groups; the monitor agrees with the reference."""
    if kind == "diag+linear (engine)":
        model, x = relu_mlp()
        fams = fxcons.annotate(model, (x,), head="classification").families
        assert {f.form for f in fams} == {"diag", "linear"}
    elif kind == "gram (engine)":
        model, x = linear_mlp()
        fams = fxcons.annotate(model, (x,), head="classification").families
        assert "gram" in {f.form for f in fams}
    else:
        model, x = linear_mlp()
        fams = [bottleneck_gram()] + head_translation(last="1")[:1]
        fams[1].terms[0].index = np.arange(3)[:, None]
    laws = LawSet(fams, {n: p.shape for n, p in model.named_parameters()})
    names = [n for n, _ in model.named_parameters()]
    lrs = {n: (0.2 if i % 2 == 0 else 0.05) for i, n in enumerate(names)}
    lam = 0.1
    opt = torch.optim.SGD([{"params": [p], "lr": lrs[n], "weight_decay": lam / lrs[n] * 0.05}
                           for n, p in model.named_parameters()], lr=0.1)
    # λ_p τ_p = 0.005 for every parameter: one decay factor d = 0.995 for the whole law
    mon = Monitor(laws, opt, model=model, compile=False)
    y = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for (after, pred, before) in reference_step(model, fams, x, y, opt, lrs.__getitem__,
                                                    lambda n: lam / lrs[n] * 0.05):
            scale = after.abs().max() + before.abs().max()
            assert torch.allclose(after, pred, atol=1e-13 * float(scale), rtol=0)
            assert (after - before).abs().max() > 1e-6 * scale or kind != "diag+linear (engine)"
    rep = mon.report()
    assert rep["steps"] == 5 and rep["ok"]
    assert rep["orthogonality_max"] < 1e-12
    assert rep["prediction_rel_error_max"] < 1e-13
    assert rep["cumulative_error_max"] < 1e-12
    assert rep["drift_max"] > 1e-6  # the laws do move: the τ² term is real


def test_monitor_drift_matches_reference():
    """drift_k = max_u |h(θ_k) − h(θ_0)| / max(mass_0, 1e-3·mass_k) per family, recomputed by hand."""
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    mon = fxcons.monitor(ann, opt, compile=False)
    h0 = {f.name: f.evaluate(dict(model.named_parameters())).detach().clone() for f in ann.families}
    m0 = {}
    for f in ann.families:
        fa = scaled(f, lambda n: 1.0)
        for t in fa.terms:
            t.coef = abs(t.coef)
        P = {n: (p.detach().abs() if f.form == "linear" else p.detach()) for n, p in model.named_parameters()}
        m0[f.name] = (fa, fa.evaluate(P))
    train(model, x, opt, steps=4)
    hist = mon.history
    assert hist["drift"].shape == (4, len(ann.families))
    for fi, f in enumerate(ann.families):
        P = dict(model.named_parameters())
        fa, mass0 = m0[f.name]
        massk = fa.evaluate({n: (p.detach().abs() if f.form == "linear" else p.detach()) for n, p in P.items()})
        ref = ((f.evaluate(P) - h0[f.name]).abs() / torch.maximum(mass0, 1e-3 * massk)).max().item()
        assert hist["drift"][-1, fi] == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_gradient_clipping_keeps_the_identity():
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.01)
    mon = fxcons.monitor(ann, opt, compile=False)
    y = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        for after, pred, _ in reference_step(model, ann.families, x, y, opt, lambda n: 0.5, lambda n: 0.01,
                                             clip=1e-3):
            assert torch.allclose(after, pred, atol=1e-14, rtol=1e-12)
    rep = mon.report()
    assert rep["prediction_rel_error_max"] < 1e-13 and rep["orthogonality_max"] < 1e-12


@pytest.mark.parametrize("opts", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01),
                                  dict(momentum=0.5, dampening=0.3, weight_decay=0.02)])
def test_momentum_identity(opts):
    """Heavy ball: h(θ⁺) expanded in θ, g and the buffer; only <∇h(θ), g> = 0 is dropped."""
    model, x = linear_mlp()
    fams = fxcons.annotate(model, (x,), head="classification").families + [bottleneck_gram()]
    laws = LawSet(fams, {n: p.shape for n, p in model.named_parameters()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **opts)
    mon = Monitor(laws, opt, model=model, compile=False)
    train(model, x, opt, steps=8)
    rep = mon.report()
    assert rep["optimizer"] == "sgd-momentum" and "momentum" in rep["prediction"]
    assert rep["prediction_rel_error_max"] < 1e-13
    assert rep["cumulative_error_max"] < 1e-12
    assert rep["drift_max"] > 1e-4


def test_momentum_prediction_is_not_the_sgd_formula():
    """Sanity: with momentum, the plain-SGD formula τ²h(g) misses the buffer terms by far."""
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    train(model, x, opt, steps=3)
    y = torch.randint(0, 4, (x.shape[0],))
    out = reference_step(model, [f for f in ann.families if f.form == "diag"], x, y, opt, lambda n: 0.2,
                         lambda n: 0.0)
    assert max(float((a - p).abs().max() / a.abs().max()) for a, p, _ in out) > 1e-3


def test_adamw_drift_only():
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    mon = fxcons.monitor(ann, opt, compile=False)
    train(model, x, opt, steps=5)
    rep = mon.report()
    assert rep["optimizer"] == "adamw" and rep["prediction"].startswith("not predicted")
    assert rep["prediction_rel_error_max"] is None and rep["cumulative_error_max"] is None
    assert all(d["prediction_rel_error_max"] is None for d in rep["families"])
    assert rep["drift_max"] > 1e-3 and rep["orthogonality_max"] < 1e-12 and rep["ok"]
    assert np.isnan(mon.history["prediction_error"]).all()


def test_wrong_law_is_flagged():
    """Σ_j ‖W1[j]‖² of one layer alone (no consumer columns) is not conserved: flagged."""
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    wrong = LawFamily("0 rows alone", "rescale", "exact", "diag",
                      [Term("0.weight", "sq0", 1.0, np.arange(12)[:, None])])
    laws = LawSet(list(ann.families) + [wrong], ann.laws.param_shapes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(laws, opt, model=model, compile=False)
    train(model, x, opt, steps=3)
    rep = mon.report()
    assert rep["flagged"] == ["0 rows alone"] and not rep["ok"]
    bad = next(d for d in rep["families"] if d["name"] == "0 rows alone")
    assert bad["orthogonality_max"] > 1e-3 and bad["flagged"]
    assert bad["prediction_rel_error_max"] > 1e-6  # the SGD identity fails for a non-law
    assert rep["orthogonality_max"] == bad["orthogonality_max"]
    good = [d for d in rep["families"] if d["name"] != "0 rows alone"]
    assert max(d["orthogonality_max"] for d in good) < 1e-12
    assert isinstance(rep, MonitorReport) and rep.table.row_count == len(rep["families"])


def test_every_detach_and_history():
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = fxcons.monitor(ann, opt, every=3, compile=False)
    train(model, x, opt, steps=7)
    h = mon.history
    assert list(h["step"]) == [0, 3, 6]
    assert np.isnan(h["cumulative_error"]).all() and (h["prediction_error"] < 1e-13).all()
    mon.detach()
    train(model, x, opt, steps=3)
    assert len(mon.history["step"]) == 3
    assert mon.report()["cumulative_error_max"] is None


def test_tied_and_unoptimized_parameters():
    """A parameter shared by two modules is one tensor; a law parameter missing from the optimizer
    makes its families unpredicted (warning) instead of wrong."""
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    params = [p for n, p in model.named_parameters() if not n.startswith("4.")]
    opt = torch.optim.SGD(params, lr=0.1)
    with pytest.warns(UserWarning, match="does not update"):
        mon = fxcons.monitor(ann, opt, compile=False)
    train(model, x, opt, steps=2)
    rep = mon.report()
    by = {d["name"]: d for d in rep["families"]}
    assert any(d["prediction_rel_error_max"] is None for d in by.values())
    assert rep["prediction_rel_error_max"] < 1e-13


def test_nonuniform_decay_and_changing_learning_rates():
    """Per-group weight decays that differ inside one law, a scheduler, and one group's rate changed
    by hand: the expansion keeps the mismatch terms, so the prediction stays exact."""
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    named = dict(model.named_parameters())
    opt = torch.optim.SGD([{"params": [named["0.weight"], named["2.weight"]], "lr": 0.1, "weight_decay": 0.05},
                           {"params": [p for n, p in named.items() if n not in ("0.weight", "2.weight")],
                            "lr": 0.02, "weight_decay": 0.0}], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    mon = fxcons.monitor(ann, opt, compile=False)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (x.shape[0],), generator=g)
    for k in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        if k == 3:
            opt.param_groups[1]["lr"] = 0.07
    rep = mon.report()
    assert rep["prediction_rel_error_max"] < 1e-13 and rep["orthogonality_max"] < 1e-12
    assert rep["drift_max"] > 1e-4


def test_tied_parameter_is_one_tensor():
    net, x = relu_mlp()

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.alias = net, net[0]  # the same Linear under two names

        def forward(self, v):
            return self.net(v)

    model = Tied()
    fam = LawFamily("tied", "rescale", "exact", "diag",
                    [Term("net.0.weight", "sq0", 1.0, np.arange(12)[:, None]),
                     Term("alias.bias", "sq", 1.0, np.arange(12)[:, None]),
                     Term("net.2.weight", "sq1", -1.0, np.arange(12)[:, None])])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(LawSet([fam]), opt, model=model, compile=False)
    assert len(mon.tensors) == 3 and mon.pid_of["alias.bias"] != mon.pid_of["net.0.weight"]
    assert mon.tensors[mon.pid_of["alias.bias"]] is net[0].bias
    train(model, x, opt, steps=2)
    assert mon.report()["prediction_rel_error_max"] < 1e-13


def test_closure_step_records_drift_only():
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = fxcons.monitor(ann, opt, compile=False)
    y = torch.randint(0, 4, (x.shape[0],))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.warns(UserWarning, match="closure"):
        for _ in range(3):
            opt.step(closure)
    rep = mon.report()
    assert rep["steps"] == 3 and rep["drift_max"] > 1e-6
    assert rep["orthogonality_max"] is None and rep["prediction_rel_error_max"] is None
    assert rep["prediction"].startswith("not predicted (step(closure)")


def test_parameter_frozen_after_attach_is_not_flagged():
    """requires_grad_(False) mid-run: the loss still depends on it but it gets no gradient, so
    the zero 'gradient' says nothing about its laws (they were flagged as NOT A LAW)."""
    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = fxcons.monitor(ann, opt, compile=False)
    train(model, x, opt, steps=2)
    model[4].weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="stopped requiring gradients"):
        train(model, x, opt, steps=3)
    rep = mon.report()
    assert rep["ok"] and not rep["flagged"]
    touched = [d for d in rep["families"] if any(t.param == "4.weight" for f in ann.families
                                                   if f.name == d["name"] for t in f.terms)]
    assert touched and all(d["orthogonality_max"] is None and d["prediction_rel_error_max"] is None
                           for d in touched)
    others = [d for d in rep["families"] if d not in touched and d["exactness"] == "exact"]
    assert others and max(d["prediction_rel_error_max"] for d in others) < 1e-10


def test_tensor_learning_rate_is_not_read_back_each_step(monkeypatch):
    """lr=torch.tensor(...) (the capturable pattern) stays on its device: the per-step
    coefficients are built from it without .cpu() (a sync on CUDA), and the identity holds."""
    import importlib

    M = importlib.import_module("fxcons.monitor")  # (fxcons.monitor, the attribute, is the function)

    model, x = relu_mlp()
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.05, dtype=torch.float64))
    mon = fxcons.monitor(ann, opt, compile=False)
    reads = []
    real = M._num
    monkeypatch.setattr(M, "_num", lambda v: reads.append(v) or real(v))
    train(model, x, opt, steps=4)
    assert reads == []
    rep = mon.report()
    assert rep["ok"] and rep["prediction_rel_error_max"] < 1e-10


def test_tolerances_and_errors():
    assert default_tolerance(torch.float64) == 1e-8 and default_tolerance(torch.float32) == 1e-4
    model, x = relu_mlp()
    bad = LawSet([LawFamily("x", "rescale", "exact", "diag", [Term("nope.weight", "sq0", 1.0, np.zeros((1, 1),
                                                                                                  dtype=np.int64))])])
    with pytest.raises(fxcons.LawInputError, match="nope.weight"):
        Monitor(bad, torch.optim.SGD(model.parameters(), lr=0.1), model=model)


# ----------------------------------------------------------------------------- compiled, float32

def test_compiled_training_step_and_monitor_cpu():
    """One compiled training step (model forward + backward + optimizer step inside one
    torch.compile'd function) with the compiled law kernels, float32 on CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(16, 6)
    y = torch.randint(0, 4, (16,))
    ann = fxcons.annotate(model, (x,), head="classification")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    mon = fxcons.monitor(ann, opt)

    @torch.compile
    def step(xb, yb):
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = [float(step(x, y)) for _ in range(4)]
    assert not [w for w in caught if "fxcons" in str(w.message)]  # no fallback to eager
    assert losses[-1] < losses[0]
    rep = mon.report()
    assert rep["compiled"] and "compile_error" not in rep
    assert rep["steps"] == 4
    assert rep["orthogonality_max"] < 1e-5  # float32 gradients
    assert rep["prediction_rel_error_max"] < 1e-6
    assert 1e-6 < rep["drift_max"] < 1
