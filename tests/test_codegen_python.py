"""Generated standalone Python: golden text, agreement with LawSet.evaluate, drift, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fxcons
from fxcons.codegen import to_python
from fxcons.lawset import LawFamily, LawSet, Term

torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / "golden"


# ----------------------------------------------------------------------------- fixtures
def all_forms_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Module()
    m.a = nn.Linear(3, 4)
    m.b = nn.Linear(4, 6)
    m.conv = nn.Conv2d(4, 6, 3, groups=2)
    m.emb = nn.Embedding(7, 4)
    m.cube = nn.Parameter(torch.randn(2, 3, 4))
    return m


def all_forms_lawset() -> LawSet:
    """Hand-built families of every form, reducer and index pattern the emitters handle.

    The values need not be conserved: the emitters must reproduce LawFamily.evaluate whatever
    the family says.
    """
    A = np.array
    ar = lambda n, k=1, s=0: np.arange(s, s + n * k).reshape(n, k)  # noqa: E731
    fams = [
        LawFamily("a→b rescale[4]", "rescale", "exact", "diag", [
            Term("a.weight", "sq0", 1.0, ar(4)), Term("a.bias", "sq", 1.0, ar(4)),
            Term("b.weight", "sq1", -1.0, ar(4))], where="a, b"),
        LawFamily("conv grouped cols", "rescale", "exact", "diag", [
            Term("conv.weight", "sq1", 1.0, ar(4), groups=2), Term("conv.bias", "sq", -1.0, ar(4, s=2)),
            Term("b.bias", "sq", 2.5, A([[0], [2], [4], [5]]))]),  # slice, slice, literal list
        LawFamily("blocks k>1", "scale", "eps", "diag", [
            Term("a.weight", "sq", 0.5, ar(4, 3)),                               # contiguous rows
            Term("emb.weight", "sq0", -2.0, A([[6, 0], [1, 3], [2, 2], [5, 4]])),  # literal
            Term("conv.weight", "sq0", 1.0, 0 + 1 * np.arange(4)[:, None] + 2 * np.arange(2)),  # affine
            Term("b.weight", "sq0", 1.0, A([[0, 1], [3, 4], [1, 2], [4, 5]]))]),  # row ranges
        LawFamily("strided units", "scale", "eps", "diag", [
            Term("b.weight", "sq0", 1.0, ar(3, 2)[:, :1]), Term("conv.weight", "sq0", -1.0, A([[5], [3], [1]]))]),
        LawFamily("linear mix", "translation", "exact", "linear", [
            Term("b.weight", "sum0", 1.0, ar(4)), Term("a.bias", "entry", -1.0, A([[3], [1], [0], [2]])),
            Term("emb.weight", "sumlast", 0.25, A([[0, 6], [1, 5], [2, 4], [3, 3]])),
            Term("conv.bias", "total", 1.0, np.zeros((4, 1), dtype=np.int64)),
            Term("cube", "sum1", -1.0, ar(4, 2))]),
        LawFamily("linear entries", "translation", "exact", "linear", [Term("conv.bias", "entry", 1.0, ar(6))]),
        LawFamily("a|b gl[2x2]", "gl", "exact", "gram", [
            Term("a.weight", "gram", 1.0, ar(2, 2), axis=0), Term("a.bias", "gram", 1.0, ar(2, 2), axis=0),
            Term("b.weight", "gram", -1.0, ar(2, 2), axis=1)]),
        LawFamily("conv head qk", "attention_qk", "exact", "gram", [
            Term("conv.weight", "gram", 1.5, A([[5, 1, 3], [0, 2, 4]]), axis=0),
            Term("cube", "gram", -1.0, A([[0, 3, 1], [2, 1, 0]]), axis=2)]),
    ]
    m = all_forms_model()
    return LawSet(fams, {n: tuple(p.shape) for n, p in m.named_parameters()})


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def load_source(src: str, name: str = "generated_laws") -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(src, f"<{name}>", "exec"), mod.__dict__)
    return mod


def rel_err(ref: dict, got: dict) -> float:
    """max over families of max|got − ref| / max(max|ref|, tiny)."""
    worst = 0.0
    assert list(ref) == list(got)
    for k in ref:
        r, g = ref[k].double(), got[k].double()
        assert r.shape == g.shape, k
        scale = max(r.abs().max().item(), 1e-30) if r.numel() else 1.0
        worst = max(worst, (r - g).abs().max().item() / scale if r.numel() else 0.0)
    return worst


def random_params(laws: LawSet, dtype=torch.float64, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(tuple(s), generator=g, dtype=dtype) for n, s in laws.param_shapes.items()}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("FXCONS_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with FXCONS_UPDATE_GOLDEN=1"
    want = path.read_text(encoding="utf-8")
    assert text == want, f"generated text differs from {path}; if intended, regenerate with FXCONS_UPDATE_GOLDEN=1"


@pytest.fixture(scope="module")
def resnet18_ann():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = tv.models.resnet18()
    return m, fxcons.annotate(m, (torch.randn(2, 3, 32, 32),))


# ----------------------------------------------------------------------------- golden text
def test_golden_tiny_mlp():
    ann = fxcons.annotate(tiny_mlp(), (torch.randn(2, 3),))
    assert ann.total_laws == 4
    src = ann.to_python(module_name="laws_tiny_mlp")
    check_golden("laws_tiny_mlp.py", src)
    compile(src, "laws_tiny_mlp.py", "exec")


def test_golden_all_forms():
    src = to_python(all_forms_lawset(), module_name="laws_all_forms")
    check_golden("laws_all_forms.py", src)


def test_generated_imports_only_torch():
    src = to_python(all_forms_lawset())
    top = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert top == ["import torch", "from torch import Tensor"]
    body_imports = {ln.strip() for ln in src.splitlines() if ln.strip().startswith("import ")}
    assert body_imports == {"import torch", "import argparse", "import json", "import sys"}


def test_compact_indices():
    src = to_python(all_forms_lawset())
    assert "torch.arange(0, 12).reshape(4, 3)" not in src  # contiguous k>1 becomes a slice
    assert "[0:12].reshape(4, 3).sum(1)" in src
    assert "_sq(p['conv.bias'])[2:6]" in src
    assert "_sq0(p['b.weight'])[0:5:2]" in src
    assert "torch.tensor([0, 3, 1, 4])[:, None] + torch.arange(2)" in src
    assert "IDX_2 = torch.arange(4)[:, None] + 2 * torch.arange(2)\n" in src
    assert "IDX_4 = (5 - 2 * torch.arange(3))[:, None]\n" in src
    assert "IDX_7 = torch.full((4, 1), 0)\n" in src


# ----------------------------------------------------------------------------- agreement
def test_all_forms_agree_with_evaluate():
    laws = all_forms_lawset()
    mod = load_source(to_python(laws))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        P = random_params(laws, dtype)
        ref = laws.evaluate(P)
        got = mod.laws(P)
        assert rel_err(ref, got) <= tol
        assert {k: v.numel() for k, v in got.items()} == {f.name: f.count for f in laws.families}
    # hand-checked values: a→b rescale and the first gram block
    P = random_params(laws)
    h = mod.laws(P)["a→b rescale[4]"]
    want = (P["a.weight"] ** 2).sum(1) + P["a.bias"] ** 2 - (P["b.weight"] ** 2).sum(0)
    torch.testing.assert_close(h, want, rtol=1e-12, atol=1e-12)
    V = torch.cat([P["a.weight"][0:2], P["a.bias"][0:2, None]], 1)
    U = P["b.weight"][:, 0:2]
    H = V @ V.T - U.T @ U
    torch.testing.assert_close(mod.laws(P)["a|b gl[2x2]"][:3], H[[0, 0, 1], [0, 1, 1]], rtol=1e-12, atol=1e-12)


def test_resnet18_agrees_with_evaluate(resnet18_ann):
    model, ann = resnet18_ann
    assert ann.total_laws == 7680
    src = ann.to_python(module_name="laws_resnet18")
    mod = load_source(src)
    assert list(mod.FAMILIES) == [f.name for f in ann.families]
    for dtype in (torch.float32, torch.float64):
        P = {k: v.detach().to(dtype) + 0.05 * torch.randn(v.shape, dtype=dtype) for k, v in model.named_parameters()}
        assert rel_err(ann.laws.evaluate(P), mod.laws(P)) <= 1e-6
    # model parameters (requires_grad) work as well
    assert rel_err(ann.evaluate(model), mod.laws(dict(model.named_parameters()))) <= 1e-6


def test_drift_matches_reference():
    laws = all_forms_lawset()
    mod = load_source(to_python(laws))
    P0 = random_params(laws, seed=1)
    P1 = {k: v + 1e-3 * torch.randn_like(v) for k, v in P0.items()}
    d = mod.drift(P0, P1)
    want = reference_drift(laws, P0, P1)
    for f in laws.families:
        torch.testing.assert_close(d[f.name], want[f.name], rtol=1e-10, atol=0)
        assert reference_mass(f, P0).min() > 0
    assert mod.drift(P0, P0) == {f.name: 0 for f in laws.families}
    # LAWS.md §4: one SGD step on y = b(relu(a(x))) moves the rescale law by exactly τ²·h(g)
    m = all_forms_model().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    loss = m.b(torch.relu(m.a(x))).sin().sum()
    names = ["a.weight", "a.bias", "b.weight"]
    grads = dict(zip(names, torch.autograd.grad(loss, [m.get_parameter(n) for n in names])))
    tau = 1e-2
    Q0 = {**P0, **{n: m.get_parameter(n).detach() for n in names}}
    Q1 = {**Q0, **{n: Q0[n] - tau * grads[n] for n in names}}
    fam = laws.families[0]
    hg = fam.evaluate({**Q0, **grads})
    want = (tau**2 * hg).abs().max() / reference_mass(fam, Q0).min()
    got = mod.drift(Q0, Q1)[fam.name]
    assert 0 < got <= want * (1 + 1e-6)
    torch.testing.assert_close(mod.laws(Q1)[fam.name] - mod.laws(Q0)[fam.name], tau**2 * hg, rtol=1e-6, atol=1e-14)
    # while a random step of the same size moves it at first order
    Q2 = {**Q0, **{n: Q0[n] - tau * torch.randn_like(grads[n]) * grads[n].norm() / grads[n].numel() ** 0.5
                   for n in names}}
    assert mod.drift(Q0, Q2)[fam.name] > 30 * got


def test_empty_family():
    e = np.zeros((0, 1), dtype=np.int64)
    laws = LawSet([LawFamily("none", "rescale", "exact", "diag", [Term("w", "sq0", 1.0, e)]),
                   LawFamily("some", "rescale", "exact", "diag", [Term("w", "sq0", 1.0, np.arange(3)[:, None])])],
                  {"w": (3, 2)})
    mod = load_source(to_python(laws))
    P = {"w": torch.randn(3, 2, dtype=torch.float64)}
    assert mod.laws(P)["none"].shape == (0,)
    d = mod.drift(P, {"w": 1.1 * P["w"]})  # h and its mass grow by 1.21: |Δh| / mass(after)
    assert d["none"] == 0 and d["some"].item() == pytest.approx(0.21 / 1.21, rel=1e-12)


def test_drift_of_a_law_that_starts_at_zero_is_not_rounding_noise_over_zero():
    """A zero-initialised bias whose laws stay zero up to rounding (the key bias under SGD): the
    floor (1e-6 of the mean law mass) keeps 1e-18 of noise from reading as a 1e12 drift."""
    laws = LawSet([LawFamily("w", "rescale", "exact", "diag", [Term("w", "sq0", 1.0, np.arange(3)[:, None])]),
                   LawFamily("kb", "translation", "exact", "linear", [Term("b", "entry", 1.0, np.arange(3)[:, None])])],
                  {"w": (3, 2), "b": (3,)})
    mod = load_source(to_python(laws))
    P0 = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    P1 = {"w": P0["w"], "b": torch.tensor([5e-18, -2e-18, 0.0], dtype=torch.float64)}
    d = mod.drift(P0, P1)
    assert d["w"] == 0 and 0 < d["kb"].item() < 1e-10
    torch.testing.assert_close(d["kb"], reference_drift(laws, P0, P1)["kb"], rtol=1e-12, atol=0)


def test_engine_families_of_every_form():
    """Gram and linear families as the engine writes them (case E MHA, bottleneck + softmax head)."""
    from test_symbolic import _MHA

    torch.manual_seed(0)
    forms = set()
    for m, x, head in [(_MHA(), torch.randn(2, 4, 4), None),
                       (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)),
                        torch.randn(5, 3), "classification")]:
        ann = fxcons.annotate(m, (x,), head=head)
        forms |= {f.form for f in ann.families}
        P = {k: v.detach().double() + 0.1 for k, v in m.named_parameters()}
        assert rel_err(ann.laws.evaluate(P), load_source(ann.to_python()).laws(P)) <= 1e-12
    assert forms == {"diag", "linear", "gram"}


def reference_drift(laws: LawSet, P0: dict, P1: dict) -> dict[str, torch.Tensor]:
    """max_u |Δh_u| / max(mass_u(P0), mass_u(P1), 1e-6 · mean of every law's mass at P0)."""
    h0, h1 = laws.evaluate(P0), laws.evaluate(P1)
    m0 = {f.name: reference_mass(f, P0) for f in laws.families}
    floor = 1e-6 * torch.cat([m.reshape(-1) for m in m0.values()]).mean()
    out = {}
    for f in laws.families:
        den = torch.maximum(torch.maximum(m0[f.name], reference_mass(f, P1)), floor.clamp_min(1e-30))
        out[f.name] = ((h1[f.name] - h0[f.name]).abs() / den).max()
    return out


def reference_mass(f: LawFamily, P: dict) -> torch.Tensor:
    """Mass by brute force, law by law, from the definition (independent of the emitter)."""
    from fxcons.lawset import reduce_tensor

    if f.form == "gram":
        D = 0
        for t in f.terms:
            M = torch.movedim(P[t.param], t.axis, 0)[torch.as_tensor(t.index)]
            D = D + abs(t.coef) * M.reshape(M.shape[0], M.shape[1], -1).square().sum(-1)
        r = D.shape[1]
        return torch.stack([torch.sqrt(D[b, i] * D[b, j]) for b in range(D.shape[0])
                            for i in range(r) for j in range(i, r)])
    out = []
    for u in range(f.blocks):
        s = 0.0
        for t in f.terms:
            x = P[t.param].square() if f.form == "diag" else P[t.param].abs()
            R = reduce_tensor(x, t.reducer, t.groups)
            s = s + abs(t.coef) * sum(R[i] for i in t.index[u].tolist())
        out.append(s)
    return torch.stack(out)


# ----------------------------------------------------------------------------- CLI
def _run_cli(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_summary_json_and_errors(tmp_path):
    model = tiny_mlp()
    ann = fxcons.annotate(model, (torch.randn(2, 3),))
    script = tmp_path / "laws_tiny.py"
    script.write_text(ann.to_python(module_name="laws_tiny"), encoding="utf-8")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ck.pt")
    sd_bad = dict(sd)
    sd_bad["2.weight"] = sd["2.weight"].clone()
    sd_bad["2.weight"][1, 2] = float("nan")
    torch.save(sd_bad, tmp_path / "nan.pt")
    torch.save({k: v for k, v in sd.items() if k != "0.bias"}, tmp_path / "missing.pt")
    torch.save({**sd, "0.weight": torch.zeros(3, 4)}, tmp_path / "shape.pt")
    torch.save({"model": sd}, tmp_path / "model_key.pt")

    # one run per case would cost a torch import each: run the CLI in-process, one subprocess for --json
    mod = load_source(script.read_text(encoding="utf-8"))
    want = ann.laws.evaluate({k: v.double() for k, v in sd.items()})
    r = _run_cli(script, str(tmp_path / "ck.pt"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (name,) = doc["families"]
    assert doc["total_laws"] == 4 and doc["families"][name]["count"] == 4
    np.testing.assert_allclose(doc["families"][name]["values"], want[name].numpy(), rtol=1e-12)
    assert doc["families"][name]["max_abs"] == pytest.approx(want[name].abs().max().item(), rel=1e-12)

    errors = {}
    for case in ("nan", "missing", "shape", "nonexistent"):
        with pytest.raises(ValueError) as e:
            mod.check_params(mod._load_state_dict(str(tmp_path / f"{case}.pt")))
        errors[case] = str(e.value)
    assert errors["nan"] == "parameter '2.weight' contains NaN or Inf"
    assert errors["missing"] == "parameter '0.bias' is missing from the state dict"
    assert errors["shape"] == "parameter '0.weight' has shape (3, 4), expected (4, 3)"
    assert errors["nonexistent"].startswith(f"cannot read checkpoint '{tmp_path / 'nonexistent.pt'}'")
    # same wording as LawSet.check_params
    for case in ("nan", "missing", "shape"):
        with pytest.raises(fxcons.LawInputError) as e:
            ann.laws.check_params(torch.load(tmp_path / f"{case}.pt", weights_only=True))
        assert str(e.value) == errors[case]
    assert mod.main([str(tmp_path / "model_key.pt")]) == 0
    assert mod.main([str(tmp_path / "nan.pt")]) == 2


def test_cli_text_output(tmp_path, capsys):
    model = tiny_mlp()
    ann = fxcons.annotate(model, (torch.randn(2, 3),))
    mod = load_source(ann.to_python())
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert mod.main([str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path / 'm.pt'}: 1 family, 4 laws"
    h = ann.laws.evaluate({k: v.double() for k, v in model.state_dict().items()})["0→2 rescale[4]"]
    assert out[2].split() == ["0→2", "rescale[4]", "rescale", "exact", "4",
                              f"{h.abs().max().item():.5g}", f"{h.mean().item():.5g}"]
    assert mod.main([str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot read checkpoint")
