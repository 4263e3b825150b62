"""Graph passes of fxcons, one module per symmetry family (installed as ``fxcons.passes``).

* ``rescale``: the diagonal log-scale rules (neuron rescaling, normalization scale, residual
  coupling, gating, tied parameters) -- LAWS.md §3.1, §3.4, §3.6.
* ``gl``: linear bottlenecks, GL(r) -- LAWS.md §3.2.
* ``translation``: linear laws from mean-subtracting ops and softmax heads -- LAWS.md §3.5.
* ``attention``: per-head query/key and value/output GL laws -- LAWS.md §3.3.
"""

from .rescale import RULES as SCALE_RULES  # noqa: F401  (re-exported)

#: passes run after the diagonal engine: each takes (captured, head, families) and returns
#: (families, breakers); a pass may replace diagonal laws it subsumes (GL contains rescaling).
PIPELINE: list = []

from .translation import translation_pass  # noqa: E402

PIPELINE.append(translation_pass)

from .gl import gl_pass  # noqa: E402

PIPELINE.append(gl_pass)

from .attention import attention_pass  # noqa: E402

PIPELINE.append(attention_pass)
