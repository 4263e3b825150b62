"""Coupling graph: nodes/edges derived from the LawSet, GraphML and DOT output."""
from __future__ import annotations

import re

import networkx as nx
import pytest
import torch

import fxcons
from fxcons.graph import coupling_graph, family_node, param_node, parameters_of, to_dot, write_graph
from test_codegen_python import all_forms_lawset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet18():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return fxcons.annotate(tv.models.resnet18(), (torch.randn(2, 3, 32, 32),))


def test_resnet18_counts(resnet18):
    ann = resnet18
    g = ann.coupling_graph()
    laws = ann.laws
    n_params = len(laws.param_shapes)
    assert n_params == 62
    assert g.number_of_nodes() == n_params + len(laws.families)
    assert g.number_of_edges() == sum(len(f.params) for f in laws.families)
    assert nx.is_bipartite(g)
    fams = [n for n, d in g.nodes(data=True) if d["type"] == "family"]
    assert len(fams) == len(laws.families)
    assert sum(g.nodes[n]["count"] for n in fams) == laws.total == 7680
    # every family touches exactly its parameters
    for f in laws.families:
        assert parameters_of(g, f.name) == f.params
        assert g.nodes[family_node(f.name)]["kind"] == f.kind
        assert g.nodes[family_node(f.name)]["exactness"] == f.exactness
    # stream (residual) families couple many parameters; a block-internal one three
    streams = [f for f in laws.families if "(+" in f.name]
    assert len(streams) == 4
    for f in streams:
        assert g.degree(family_node(f.name)) >= 3
    last = next(f for f in streams if f.name.startswith("layer4.0.bn2"))
    # bn2, downsample BN (γ, β each), layer4.1.bn2 (γ, β) write; layer4.1.conv1 and fc read
    assert parameters_of(g, last.name) == sorted(
        ["layer4.0.bn2.weight", "layer4.0.bn2.bias", "layer4.0.downsample.1.weight", "layer4.0.downsample.1.bias",
         "layer4.1.bn2.weight", "layer4.1.bn2.bias", "layer4.1.conv1.weight", "fc.weight"])
    assert g.degree(family_node("layer1.0.bn1→layer1.0.conv2 rescale[64]")) == 3
    # parameter attributes: laws through it, and unconstrained parameters are isolated
    fc = g.nodes[param_node("fc.weight")]
    assert fc["laws"] == 512 and fc["families"] == 1 and fc["shape"] == "1000x512"
    assert g.degree(param_node("fc.bias")) == 0 and g.nodes[param_node("fc.bias")]["laws"] == 0
    conv = g.nodes[param_node("layer1.0.conv2.weight")]
    assert conv["laws"] == 128 and conv["families"] == 2  # its scale law and its input rescale law
    e = g.edges[family_node("layer1.0.bn1→layer1.0.conv2 rescale[64]"), param_node("layer1.0.conv2.weight")]
    assert (e["sign"], e["reducer"], e["coef"], e["terms"]) == ("-", "sq1", -1.0, 1)
    e = g.edges[family_node("layer1.0.bn1→layer1.0.conv2 rescale[64]"), param_node("layer1.0.bn1.bias")]
    assert (e["sign"], e["reducer"]) == ("+", "sq")


def test_mixed_signs_and_gram(tmp_path):
    g = coupling_graph(all_forms_lawset())
    e = g.edges[family_node("a|b gl[2x2]"), param_node("b.weight")]
    assert (e["sign"], e["reducer"]) == ("-", "gram")
    assert g.nodes[family_node("conv head qk")]["count"] == 12
    assert parameters_of(g, "linear mix") == ["a.bias", "b.weight", "conv.bias", "cube", "emb.weight"]


def test_write_graphml_roundtrip(resnet18, tmp_path):
    g = resnet18.coupling_graph()
    path = write_graph(g, tmp_path / "g.graphml")
    h = nx.read_graphml(path)
    assert (h.number_of_nodes(), h.number_of_edges()) == (g.number_of_nodes(), g.number_of_edges())
    n = family_node("layer1.0.bn1→layer1.0.conv2 rescale[64]")
    assert h.nodes[n]["count"] == 64 and h.nodes[n]["kind"] == "rescale"


def test_write_dot(resnet18, tmp_path):
    g = resnet18.coupling_graph()
    assert write_graph(g, tmp_path / "g.dot") == str(tmp_path / "g.dot")
    text = (tmp_path / "g.dot").read_text(encoding="utf-8")
    assert text.startswith("graph fxcons {") and text.rstrip().endswith("}")
    node_lines = [ln for ln in text.splitlines() if re.match(r'  "[^"]+" \[', ln)]
    edge_lines = [ln for ln in text.splitlines() if " -- " in ln]
    assert len(node_lines) == g.number_of_nodes() and len(edge_lines) == g.number_of_edges()
    assert '"param:fc.weight" [shape=ellipse, style=solid, label="fc.weight\\n[1000x512]"' in text
    assert '"param:fc.bias" [shape=ellipse, style=dashed' in text
    # names with quotes and backslashes are escaped
    weird = nx.Graph()
    weird.add_node('param:a"b\\c', type="param", name='a"b\\c', shape="2", laws=1)
    assert '"param:a\\"b\\\\c"' in to_dot(weird)


def test_write_errors(tmp_path):
    g = coupling_graph(all_forms_lawset())
    with pytest.raises(fxcons.FxconsError, match=r"use \.graphml or \.dot"):
        write_graph(g, tmp_path / "g.png")
    with pytest.raises(fxcons.FxconsError) as e:
        write_graph(g, tmp_path / "missing" / "g.dot")
    assert "\n" not in str(e.value) and "cannot write graph" in str(e.value)
    assert list(tmp_path.iterdir()) == []
