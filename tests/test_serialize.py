"""JSON schema v1: dump -> JSON -> load -> identical law values; validation and bad input."""
from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest
import torch

import fxcons
from fxcons.serialize import SCHEMA, SCHEMA_VERSION, dump_annotation, family_formula, index_pattern, load, save
from test_codegen_python import all_forms_lawset, random_params

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet18():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = tv.models.resnet18()
    return m, fxcons.annotate(m, (torch.randn(2, 3, 32, 32),))


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA_VERSION == 1 and SCHEMA["properties"]["version"] == {"const": 1}


def test_resnet18_roundtrip(resnet18, tmp_path):
    model, ann = resnet18
    doc = dump_annotation(ann)
    jsonschema.validate(doc, SCHEMA)
    assert doc["version"] == 1 and doc["format"] == "fxcons.laws"
    assert doc["model"] == {"frontend": ann.frontend, "head": None, "training": True, "tied": {}}
    assert doc["total_laws"] == 7680 and sum(doc["counts"].values()) == 7680
    assert doc["counts"]["rescale"] + doc["counts"]["scale"] == 7680
    assert len(doc["families"]) == len(ann.families)
    fam = next(f for f in doc["families"] if f["name"] == "layer1.0.bn1→layer1.0.conv2 rescale[64]")
    assert (fam["kind"], fam["exactness"], fam["form"], fam["count"], fam["independent"]) == \
        ("rescale", "exact", "diag", 64, 64)
    assert [(t["param"], t["reducer"], t["sign"]) for t in fam["terms"]] == [
        ("layer1.0.bn1.weight", "sq", 1), ("layer1.0.bn1.bias", "sq", 1), ("layer1.0.conv2.weight", "sq1", -1)]
    assert fam["terms"][2]["index"] == {"start": 0, "shape": [64, 1], "strides": [1, 1]}
    assert fam["terms"][2]["slice"] == "Σ layer1.0.conv2.weight[:, j, ...]²"
    assert fam["formula"].startswith("h[u] = layer1.0.bn1.weight[j]² + layer1.0.bn1.bias[j]² − Σ layer1.0.conv2.weight")
    assert all(isinstance(b, dict) and set(b) == {"node", "where", "why", "family"} for b in doc["breakers"])

    text = json.dumps(doc, ensure_ascii=False)
    assert len(text) < 100_000  # affine indices are stored compactly
    P = {k: v.detach().double() + 0.1 for k, v in model.named_parameters()}
    ref = ann.laws.evaluate(P)
    for src in (doc, text, save(ann, tmp_path / "laws.json"), tmp_path / "laws.json"):
        laws = load(src)
        assert laws.param_shapes == {k: tuple(v) for k, v in ann.laws.param_shapes.items()}
        got = laws.evaluate(P)
        assert list(got) == list(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert fxcons.load(tmp_path / "laws.json").total == 7680


def test_cli_json_is_loadable():
    """``fxcons annotate --json`` output (report.annotation_json) validates and loads."""
    from fxcons.report import annotation_json

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ann = fxcons.annotate(m, (torch.randn(2, 3),))
    doc = json.loads(json.dumps(annotation_json(ann, "models:tiny"), default=str))
    jsonschema.validate(doc, SCHEMA)
    P = {k: v.detach() for k, v in m.named_parameters()}
    assert torch.equal(load(doc).evaluate(P)["0→2 rescale[4]"], ann.evaluate(m)["0→2 rescale[4]"])


def test_all_forms_roundtrip_and_breakers():
    laws = all_forms_lawset()
    doc = dump_annotation(laws)
    jsonschema.validate(doc, SCHEMA)
    assert doc["model"]["frontend"] is None and doc["breakers"] == []
    back = load(json.loads(json.dumps(doc)))
    P = random_params(laws)
    ref, got = laws.evaluate(P), back.evaluate(P)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    for f, g in zip(laws.families, back.families):
        assert (f.name, f.kind, f.exactness, f.form, f.count) == (g.name, g.kind, g.exactness, g.form, g.count)
        for t, u in zip(f.terms, g.terms):
            assert (t.param, t.reducer, t.coef, t.axis, t.groups) == (u.param, u.reducer, u.coef, u.axis, u.groups)
            np.testing.assert_array_equal(t.index, u.index)
    kinds = {f["name"]: f["terms"][0]["index"] for f in doc["families"]}
    assert kinds["linear mix"] == {"start": 0, "shape": [4, 1], "strides": [1, 1]}
    assert doc["families"][1]["terms"][2]["index"] == [[0], [2], [4], [5]]


def test_breakers_are_dumped():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU6(), torch.nn.Linear(4, 2))
    ann = fxcons.annotate(m, (torch.randn(2, 3),))
    doc = dump_annotation(ann)
    jsonschema.validate(doc, SCHEMA)
    assert len(doc["breakers"]) == len(ann.breakers) >= 1
    assert doc["breakers"][0] == {"node": str(ann.breakers[0].node), "where": str(ann.breakers[0].where),
                                  "why": str(ann.breakers[0].why), "family": str(ann.breakers[0].family)}


def test_index_pattern():
    assert index_pattern(np.arange(6).reshape(3, 2)) == (0, 2, 1)
    assert index_pattern(np.array([[5], [3], [1]])) == (5, -2, 1)
    assert index_pattern(np.array([[0, 1], [3, 4], [1, 2]])) is None
    assert index_pattern(np.zeros((0, 1), dtype=np.int64)) is None
    assert family_formula(all_forms_lawset().families[3]) == \
        "h[u] = Σ b.weight[j, ...]² − Σ conv.weight[j, ...]² ; term 0: j = 2·u; term 1: j = 5 − 2·u"


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("version"), "no 'version' field"),
    (lambda d: d.update(version=2), "schema version 2; this fxcons reads version 1"),
    (lambda d: d.update(format="other"), "format is 'other'"),
    (lambda d: d["families"][0].update(exactness="maybe"), "does not match schema v1 at families/0/exactness"),
    (lambda d: d["families"][0]["terms"][0].update(reducer="cube"), "at families/0/terms/0/reducer"),
    (lambda d: d["families"][0]["terms"][0].update(index=[[0], [1], [2], [99]]), "index out of range for 'a.weight'"),
    (lambda d: d["families"][0]["terms"][0].update(param="zz"), "parameter 'zz' has no entry in param_shapes"),
    (lambda d: d["families"][0]["terms"][0].update(reducer="sum0"), "reducer 'sum0' is not valid for form 'diag'"),
    (lambda d: d["families"][0].update(count=5), "count 5 does not match its index (4)"),
    (lambda d: d["families"][0]["terms"][1].update(index=[[0], [1]]), "terms have different numbers of laws"),
])
def test_bad_documents(mutate, message):
    doc = copy.deepcopy(dump_annotation(all_forms_lawset()))
    mutate(doc)
    with pytest.raises(fxcons.FxconsError) as e:
        load(doc)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_sources(tmp_path):
    with pytest.raises(fxcons.FxconsError, match="cannot read law file"):
        load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(fxcons.FxconsError, match="is not valid JSON"):
        load(str(tmp_path / "bad.json"))
    with pytest.raises(fxcons.FxconsError, match="not valid JSON"):
        load('{"version": 1,')
    with pytest.raises(fxcons.FxconsError, match="cannot load laws from a int"):
        load(3)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(fxcons.FxconsError, match="must be an object"):
        load(tmp_path / "list.json")
    with pytest.raises(fxcons.FxconsError, match="cannot write law file"):
        save(all_forms_lawset(), tmp_path / "no" / "x.json")
