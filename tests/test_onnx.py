"""ONNX emitter: checker (full_check), onnxruntime, agreement with LawSet.evaluate, drift graph."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import fxcons
from fxcons.codegen.onnx import build_onnx, family_of_output, output_names, write_onnx
from fxcons.lawset import LawFamily, LawSet, Term
from test_codegen_python import all_forms_lawset, load_source, random_params, reference_drift, rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch.set_num_threads(1)


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_values(model, params: dict) -> dict[str, torch.Tensor]:
    """Run a values graph; results keyed by family name (via the metadata mapping)."""
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    feeds = {i.name: params[i.name].detach().cpu().numpy() for i in sess.get_inputs()}
    fam = family_of_output(model)
    outs = sess.run(None, feeds)
    return {fam[o.name]: torch.from_numpy(np.asarray(v)) for o, v in zip(sess.get_outputs(), outs)}


def run_drift(model, before: dict, after: dict) -> dict[str, float]:
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    feeds = {}
    for i in sess.get_inputs():
        side, name = i.name.split(".", 1)
        feeds[i.name] = (before if side == "before" else after)[name].detach().cpu().numpy()
    fam = family_of_output(model)
    outs = sess.run(None, feeds)
    return {fam.get(o.name, o.name): float(v) for o, v in zip(sess.get_outputs(), outs)}


@pytest.fixture(scope="module")
def resnet18():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = tv.models.resnet18()
    return m, fxcons.annotate(m, (torch.randn(2, 3, 32, 32),))


def rel_to_mass(ref: dict, got: dict, mass: dict) -> float:
    return max(((ref[k].double() - got[k].double()).abs() / mass[k].double()).max().item() for k in ref)


# ----------------------------------------------------------------------------- ResNet-18
def test_resnet18_values_agree(resnet18, tmp_path):
    model, ann = resnet18
    path = ann.to_onnx(str(tmp_path / "laws.onnx"))
    assert path == str(tmp_path / "laws.onnx") and os.path.getsize(path) < 200_000
    m = onnx.load(path)
    assert m.opset_import[0].version >= 18
    assert [i.name for i in m.graph.input] == ann.laws.params()
    for i in m.graph.input:
        assert tuple(d.dim_value for d in i.type.tensor_type.shape.dim) == tuple(ann.laws.param_shapes[i.name])
        assert i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(m.graph.output) == len(ann.families)
    assert all(o.name.isidentifier() for o in m.graph.output)
    assert list(family_of_output(m).values()) == [f.name for f in ann.families]
    props = {p.key: p.value for p in m.metadata_props}
    assert sum(f["count"] for f in json.loads(props["fxcons.families"])) == 7680

    P32 = {k: v.detach() for k, v in model.named_parameters()}
    got = run_values(m, P32)
    exact = ann.laws.evaluate({k: v.double() for k, v in P32.items()})
    ref32 = ann.laws.evaluate(P32)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref32.items()}
    # float32 in/out, float64 accumulation: within float32 output rounding of the exact value
    assert rel_err(exact, got) <= 1e-6
    mass = load_source(ann.to_python()).masses({k: v.double() for k, v in P32.items()})
    assert rel_to_mass(ref32, got, mass) <= 1e-6
    # float64 in/out: the same math as evaluate to the last bits
    P64 = {k: v.double() for k, v in P32.items()}
    got64 = run_values(build_onnx(ann.laws, dtype=torch.float64), P64)
    assert rel_err(exact, got64) <= 1e-12


def test_resnet18_drift_graph(resnet18, tmp_path):
    model, ann = resnet18
    path = ann.to_onnx(str(tmp_path / "drift.onnx"), drift=True)
    m = onnx.load(path)
    names = [i.name for i in m.graph.input]
    assert names == [f"before.{p}" for p in ann.laws.params()] + [f"after.{p}" for p in ann.laws.params()]
    assert [o.name for o in m.graph.output][-1] == "max_drift"
    P0 = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    P1 = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in P0.items()}
    got = run_drift(m, P0, P1)
    mod = load_source(ann.to_python())
    ref = mod.drift({k: v.double() for k, v in P0.items()}, {k: v.double() for k, v in P1.items()})
    for k, v in ref.items():
        assert got[k] == pytest.approx(v.item(), rel=1e-5, abs=1e-9), k
    assert got["max_drift"] == pytest.approx(max(v.item() for v in ref.values()), rel=1e-5)
    assert got["max_drift"] > 0


# ----------------------------------------------------------------------------- hand-built forms
def test_all_forms_values_and_drift():
    laws = all_forms_lawset()
    P = random_params(laws, torch.float64, seed=3)
    got = run_values(build_onnx(laws, dtype="float64"), P)
    assert rel_err(laws.evaluate(P), got) <= 1e-12
    P32 = {k: v.float() for k, v in P.items()}
    got32 = run_values(build_onnx(laws), P32)
    assert rel_err(laws.evaluate({k: v.double() for k, v in P32.items()}), got32) <= 1e-6
    # no float64 accumulation: still float32-accurate on these small sizes
    got32b = run_values(build_onnx(laws, accumulate=None), P32)
    assert rel_err(laws.evaluate(P32), got32b) <= 1e-5

    P1 = {k: v + 1e-2 * torch.randn_like(v) for k, v in P.items()}
    d = run_drift(build_onnx(laws, drift=True, dtype=torch.float64), P, P1)
    want = {k: v.item() for k, v in reference_drift(laws, P, P1).items()}
    for k, v in want.items():
        assert d[k] == pytest.approx(v, rel=1e-10), k
    assert d["max_drift"] == pytest.approx(max(want.values()), rel=1e-12)
    same = run_drift(build_onnx(laws, drift=True), P32, P32)
    assert set(same.values()) == {0.0}


def test_zero_mass_is_guarded():
    laws = LawSet([LawFamily("z", "translation", "exact", "linear", [Term("w", "entry", 1.0, np.arange(3)[:, None])])],
                  {"w": (3,)})
    zero = {"w": torch.zeros(3)}
    d = run_drift(build_onnx(laws, drift=True), zero, {"w": torch.tensor([0.0, 1e-31, 0.0])})
    assert d["z"] == pytest.approx(0.1, rel=1e-5) and np.isfinite(d["max_drift"])
    assert run_drift(build_onnx(laws, drift=True), zero, zero)["z"] == 0.0


def test_output_names_sanitized_and_unique():
    fams = [LawFamily(n, "rescale", "exact", "diag", [Term("w", "sq0", 1.0, np.arange(2)[:, None])])
            for n in ("a→b rescale[2]", "a→b rescale[2]#2", "a b rescale 2", "0.x", "max_drift")]
    laws = LawSet(fams, {"w": (2, 3)})
    names = output_names(laws, reserved=("max_drift",))
    assert list(names.values()) == ["a_b_rescale_2", "a_b_rescale_2_2", "a_b_rescale_2_3", "f_0_x", "max_drift_2"]
    m = build_onnx(laws, drift=True)
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == list(names.values()) + ["max_drift"]
    assert family_of_output(m) == {v: k for k, v in names.items()}


# ----------------------------------------------------------------------------- files and errors
def test_write_is_atomic_and_errors_are_one_line(tmp_path, monkeypatch):
    laws = all_forms_lawset()
    with pytest.raises(fxcons.FxconsError) as e:
        write_onnx(laws, str(tmp_path / "no" / "such" / "dir" / "x.onnx"))
    assert "\n" not in str(e.value) and "cannot write ONNX model" in str(e.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anyway
            with pytest.raises(fxcons.FxconsError):
                write_onnx(laws, str(ro / "x.onnx"))
    finally:
        ro.chmod(0o700)
    # a failure while writing leaves neither the target nor a temp file behind
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"old")
    import fxcons.serialize as ser

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ser.os, "replace", boom)
    with pytest.raises(fxcons.FxconsError) as e:
        write_onnx(laws, str(target))
    assert str(e.value) == f"cannot write ONNX model '{target}': No space left on device"
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx", "ro"]
    with pytest.raises(fxcons.FxconsError, match="unsupported ONNX dtype"):
        build_onnx(laws, dtype="int8")


def test_engine_families_of_every_form():
    """Families as the engine writes them (MHA: gram + linear; bottleneck + softmax head)."""
    from test_symbolic import _MHA
    from torch import nn

    torch.manual_seed(0)
    cases = [(_MHA(), torch.randn(2, 4, 4), None),
             (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.randn(5, 3),
              "classification")]
    forms = set()
    for m, x, head in cases:
        ann = fxcons.annotate(m, (x,), head=head)
        forms |= {f.form for f in ann.families}
        P = {k: v.detach().double() + 0.1 for k, v in m.named_parameters()}
        assert rel_err(ann.laws.evaluate(P), run_values(build_onnx(ann.laws, dtype="float64"), P)) <= 1e-12
        P32 = {k: v.float() for k, v in P.items()}
        assert rel_err(ann.laws.evaluate(P), run_values(build_onnx(ann.laws), P32)) <= 1e-6
    assert forms == {"diag", "linear", "gram"}


# ----------------------------------------------------------------------------- Transformers
def _transformer(spec: str):
    from fxcons.specs import load_spec

    torch.manual_seed(0)
    lm = load_spec(spec)
    return lm.model, fxcons.annotate(lm.model, lm.example_inputs, head=lm.head,
                                     example_kwargs=lm.example_kwargs or None, frontend=lm.frontend)


@pytest.mark.parametrize("spec", ["torchvision:vit_b_16", "hf:gpt2?n_layer=2"])
def test_transformer_values_agree(spec, tmp_path):
    """ViT-B/16 (86M parameters, 630k laws) and GPT-2 with 2 layers (tied wte / lm_head): the
    checker passes full_check, its only inputs are the parameters (a tied one once), and its
    outputs equal LawSet.evaluate to 1e-6 relative."""
    model, ann = _transformer(spec)
    kinds = ann.counts()
    assert kinds["attention_qk"] > 0 and kinds["attention_vo"] > 0
    m = onnx.load(ann.to_onnx(str(tmp_path / "laws.onnx")))
    assert m.opset_import[0].version >= 18
    names = [i.name for i in m.graph.input]
    # the initializers are the gather indices and constants, never a parameter value
    assert all(t.data_type == onnx.TensorProto.INT64 or np.prod(t.dims) <= 1 for t in m.graph.initializer)
    assert not {t.name for t in m.graph.initializer} & set(names)
    assert names == ann.laws.params() and len(set(names)) == len(names)
    canonical = dict(model.named_parameters())  # named_parameters lists a tied parameter once
    assert set(names) <= set(canonical)
    if spec.startswith("hf:gpt2"):
        assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    P32 = {k: canonical[k].detach() for k in names}
    got = run_values(m, P32)
    exact = ann.laws.evaluate({k: v.double() for k, v in P32.items()})
    assert rel_err(exact, got) <= 1e-6
