"""Coupling graph: which parameters each law family ties together.

``coupling_graph(laws)`` is a bipartite ``networkx.Graph``; a family (a hyperedge over the
parameters it reads) becomes a node of its own:

* parameter nodes ``"param:<qualified name>"``: ``type="param"``, ``name``, ``shape`` (str),
  ``numel``, ``laws`` (scalar laws that read it), ``families`` (how many families), ``bipartite=0``;
* family nodes ``"law:<family name>"``: ``type="family"``, ``name``, ``kind``, ``exactness``,
  ``form``, ``count``, ``independent``, ``bipartite=1``;
* one edge per (family, parameter): ``sign`` ("+", "-" or "±" when the family has terms of both
  signs on that parameter), ``reducer`` (comma-separated, e.g. "sq0" or "gram,gram"), ``coef``
  (the first term's coefficient), ``terms`` (how many terms of the family read the parameter).

Every parameter of ``laws.param_shapes`` is a node, including those no law reads (degree 0).
All attributes are str/int/float, so the graph can be written as GraphML as is.
``write_graph(g, path)`` writes GraphML (``.graphml``/``.xml``) or Graphviz DOT (``.dot``/``.gv``).
"""
from __future__ import annotations

import os

import networkx as nx
import numpy as np

from .errors import FxconsError
from .lawset import LawSet
from .serialize import atomic_write

PARAM, FAMILY = "param:", "law:"

_KIND_COLOURS = {"rescale": "#4e79a7", "gl": "#59a14f", "scale": "#f28e2b", "translation": "#e15759",
                 "attention_qk": "#b07aa1", "attention_vo": "#76b7b2"}


def param_node(name: str) -> str:
    return PARAM + name


def family_node(name: str) -> str:
    return FAMILY + name


def coupling_graph(laws: LawSet) -> nx.Graph:
    """The bipartite parameter–family graph of ``laws`` (see the module docstring)."""
    g = nx.Graph(name="fxcons coupling graph", total_laws=int(laws.total), families=len(laws.families))
    names = list(dict.fromkeys(list(laws.param_shapes) + laws.params()))
    for p in names:
        shape = tuple(int(x) for x in laws.param_shapes.get(p, ()))
        g.add_node(param_node(p), type="param", name=p, shape="x".join(map(str, shape)) or "scalar",
                   numel=int(np.prod(shape, dtype=np.int64)), laws=0, families=0, bipartite=0)
    for f in laws.families:
        fn = family_node(f.name)
        g.add_node(fn, type="family", name=f.name, kind=f.kind, exactness=f.exactness, form=f.form,
                   count=int(f.count), independent=int(f.independent if f.independent is not None else f.count),
                   bipartite=1)
        for p in f.params:
            terms = [t for t in f.terms if t.param == p]
            signs = {"+" if t.coef > 0 else "-" for t in terms if t.coef != 0} or {"0"}
            g.add_edge(fn, param_node(p), sign="±" if len(signs) > 1 else signs.pop(),
                       reducer=",".join(t.reducer for t in terms), coef=float(terms[0].coef), terms=len(terms))
            g.nodes[param_node(p)]["laws"] += int(f.count)
            g.nodes[param_node(p)]["families"] += 1
    return g


def parameters_of(g: nx.Graph, family: str) -> list[str]:
    """Qualified names of the parameters a family node is connected to."""
    return sorted(g.nodes[n]["name"] for n in g.neighbors(family_node(family)))


# ----------------------------------------------------------------------------- writers
def _dot_quote(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(g: nx.Graph) -> str:
    """Graphviz DOT text: parameters as ellipses, families as boxes coloured by kind."""
    lines = ["graph fxcons {", "  graph [rankdir=LR, overlap=false];", "  node [fontname=Helvetica, fontsize=10];"]
    for n, d in g.nodes(data=True):
        if d.get("type") == "family":
            label = f"{d['name']}\n{d['kind']} · {d['exactness']} · {d['count']} laws"
            colour = _KIND_COLOURS.get(d.get("kind"), "#bab0ac")
            attrs = (f"shape=box, style=filled, fillcolor={_dot_quote(colour)}, fontcolor=white, "
                     f"label={_dot_quote(label)}")
        else:
            label = f"{d.get('name', n)}\n[{d.get('shape', '')}]"
            style = "dashed" if d.get("laws", 0) == 0 else "solid"
            attrs = f"shape=ellipse, style={style}, label={_dot_quote(label)}"
        for key in ("kind", "exactness", "count", "numel", "laws"):
            if key in d:
                attrs += f", {key}={_dot_quote(d[key])}"
        lines.append(f"  {_dot_quote(n)} [{attrs}];")
    for a, b, d in g.edges(data=True):
        style = "dashed" if d.get("sign") == "-" else "solid"
        lines.append(f"  {_dot_quote(a)} -- {_dot_quote(b)} [label={_dot_quote(d.get('sign', ''))}, "
                     f"reducer={_dot_quote(d.get('reducer', ''))}, style={style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graph(g: nx.Graph, path: str | os.PathLike) -> str:
    """Write ``g`` as GraphML (``.graphml``, ``.xml``) or DOT (``.dot``, ``.gv``), atomically."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".graphml", ".xml"):
        import io

        buf = io.BytesIO()
        nx.write_graphml(g, buf, encoding="utf-8", prettyprint=True)
        data = buf.getvalue()
    elif ext in (".dot", ".gv"):
        data = to_dot(g).encode("utf-8")
    else:
        raise FxconsError(f"cannot tell the graph format of '{path}': use .graphml or .dot")
    atomic_write(path, data, what="graph")
    return path


__all__ = ["coupling_graph", "write_graph", "to_dot", "param_node", "family_node", "parameters_of"]
