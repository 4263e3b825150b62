"""Public entry point: ``fxcons.annotate(model) -> Annotation``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from .capture import Captured, capture
from .derive import dedupe_names, scale_families
from .lawset import LawSet
from .ops import canonicalize
from .scale import Breaker, ScaleAnalysis


@dataclass
class Annotation:
    """The laws of a model plus the graph facts behind them."""

    laws: LawSet
    breakers: list[Breaker]
    frontend: str
    head: str | None
    training: bool
    timings: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    example_inputs: tuple | None = field(default=None, repr=False)
    example_kwargs: dict | None = field(default=None, repr=False)
    tied: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def families(self):
        return self.laws.families

    @property
    def total_laws(self) -> int:
        return self.laws.total

    def counts(self) -> dict[str, int]:
        return self.laws.by_kind()

    def evaluate(self, model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every law value (one tensor per family) for a model or a state dict."""
        return self.laws.evaluate(params_of(model_or_state))

    def verify(self, **kw: Any):
        from .verify import verify

        return verify(self, **kw)

    def completeness(self, **kw: Any):
        """Lie-algebra bounds on the number of laws (LAWS.md §5): see :mod:`fxcons.completeness`."""
        from .completeness import completeness

        return completeness(self, **kw)

    def to_python(self, **kw: Any) -> str:
        from .codegen import to_python

        return to_python(self.laws, **kw)

    def to_onnx(self, path: str, drift: bool = False) -> str:
        """Write an ONNX law checker (inputs: parameters; outputs: one per family)."""
        from .codegen.onnx import write_onnx

        return write_onnx(self.laws, path, drift=drift)

    def to_sympy(self) -> dict:
        """Each family as a sympy expression over indexed parameter symbols."""
        from .codegen.symbolic import to_sympy

        return to_sympy(self.laws)

    def to_latex(self) -> str:
        from .codegen.symbolic import to_latex

        return to_latex(self.laws)

    def coupling_graph(self):
        """networkx graph: parameters and units as nodes, law families as hyperedges."""
        from .graph import coupling_graph

        return coupling_graph(self.laws)

    def report(self) -> str:
        from .report import render_text

        return render_text(self)

    def to_json_dict(self) -> dict:
        from .report import annotation_json

        return annotation_json(self)


def params_of(model_or_state: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        return dict(model_or_state.named_parameters())
    return model_or_state


def annotate(
    model: nn.Module,
    example_inputs: tuple | torch.Tensor | None = None,
    head: str | None = None,
    *,
    example_kwargs: dict | None = None,
    frontend: str = "auto",
    training: bool = True,
) -> Annotation:
    """Find the conservation laws of ``model``.

    ``example_inputs``: a tuple of example tensors (shapes matter, values do not).
    ``head="classification"``: the output feeds a softmax / cross-entropy over its last axis,
    which enables the translation laws of a softmax head (LAWS.md §3.5).
    ``training``: analyse in training mode (BatchNorm batch statistics, active dropout).
    """
    if head not in (None, "classification"):
        raise ValueError(f"head must be None or 'classification', got {head!r}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    t0 = time.perf_counter()
    cap = capture(model, example_inputs, frontend=frontend, training=training, example_kwargs=example_kwargs)
    t1 = time.perf_counter()
    canonicalize(cap)
    fams, breakers = run_passes(cap, head)
    t2 = time.perf_counter()
    laws = LawSet(fams, {n: p.shape for n, p in cap.params.items()})
    ann = Annotation(laws, breakers, cap.frontend, head, training,
                     timings={"capture": t1 - t0, "analysis": t2 - t1},
                     model=model, example_inputs=example_inputs, example_kwargs=example_kwargs,
                     tied={n: p.aliases for n, p in cap.params.items() if p.aliases})
    return ann


def run_passes(cap: Captured, head: str | None):
    from .passes import PIPELINE, SCALE_RULES

    A = ScaleAnalysis(cap)
    A.run(SCALE_RULES)
    fams = scale_families(A)
    breakers = list(A.breakers)
    for step in PIPELINE:
        fams, more = step(cap, head, fams)
        breakers += more
    dedupe_names(fams)
    return fams, breakers
