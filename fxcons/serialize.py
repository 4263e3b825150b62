"""JSON form of an annotation: a documented, versioned schema; ``load`` reads it back.

Usage::

    doc = fxcons.serialize.dump_annotation(ann)        # plain dict, json.dumps-able
    fxcons.serialize.save(ann, "laws.json")            # atomic write
    laws = fxcons.load("laws.json")                    # -> LawSet (also a dict or a JSON string)
    values = laws.evaluate(model.state_dict())

``SCHEMA`` is the JSON Schema (draft 2020-12) of the document; ``load`` validates against it
when ``jsonschema`` is installed and always checks structure (reducers per form, index ranges
against ``param_shapes``, counts).

Schema (version 1)
==================

A law file is one JSON object::

    {
      "format": "fxcons.laws",            # constant, identifies the file
      "version": 1,                       # SCHEMA_VERSION; load() refuses other versions
      "fxcons_version": "0.1.0",          # the writer (informative)
      "model": {                          # how the laws were found (null fields for a bare LawSet)
        "spec": "torchvision:resnet18",   # optional: the model spec the CLI was given
        "frontend": "fx" | "export" | null,
        "head": "classification" | null,
        "training": true | false | null,
        "tied": {"param": ["alias", ...]}  # parameters used under several names
      },
      "total_laws": 7680,                 # Σ family counts
      "counts": {"rescale": 3840, ...},   # scalar laws per kind
      "param_shapes": {"conv1.weight": [64, 3, 7, 7], ...},
      "families": [Family, ...],
      "breakers": [{"node": "relu6", "where": "features.0", "why": "...", "family": "rescale"}]
    }

Readers also accept ``"model": "<spec>"`` (a bare string), which ``fxcons annotate --json``
0.1.0 writes. Unknown top-level keys (``timings``, ``verify``...) are allowed and ignored.

``Family``::

    {
      "name": "layer1.0.bn1→layer1.0.conv2 rescale[64]",
      "kind": "rescale" | "gl" | "scale" | "translation" | "attention_qk" | "attention_vo",
      "exactness": "exact" | "eps",
      "form": "diag" | "linear" | "gram",
      "count": 64,                 # scalar laws (gram: blocks · r(r+1)/2)
      "independent": 64,           # functionally independent laws among them
      "params": ["layer1.0.bn1.weight", ...],
      "where": "...", "note": "...",
      "formula": "h[u] = Σ layer1.0.bn1.weight[j]² + ... ; j = u",   # human-readable
      "terms": [Term, ...]
    }

``Term`` (one parameter slice, reduced, scaled by ``coef``)::

    {
      "param": "layer1.0.conv2.weight",
      "reducer": "sq1",            # diag: sq0 sq1 sq ; linear: entry sum0 sum1 sumlast total ; gram: gram
      "coef": -1.0, "sign": -1,    # sign = sign of coef (informative)
      "axis": 0, "groups": 1,      # gram: the axis that indexes rows ; sq1: conv groups
      "slice": "Σ layer1.0.conv2.weight[:, j, ...]²",   # what R[j] is (informative)
      "index": Index
    }

``Index`` is the integer array (count, k) -- for gram (blocks, r) -- of positions ``j`` in the
reduced parameter ``R`` that law ``u`` sums (``h[u] = Σ_terms coef · Σ_k R[index[u, k]]``).
It is either a nested list, or the compact affine form
``{"start": s, "shape": [n, k], "strides": [a, b]}`` meaning ``index[u, k] = s + a·u + b·k``.

Reducers (``R`` of a parameter ``θ``, flattened): ``sq0`` = Σ of θ² over every axis but the
first; ``sq1`` = Σ of θ² per input column (per group and column for grouped convs); ``sq`` =
θ² entrywise; ``entry`` = θ entrywise; ``sum0``/``sum1``/``sumlast`` = θ summed over axis 0 / 1 /
the last axis; ``total`` = Σ θ. Gram terms: ``M = movedim(θ, axis, 0)[index[u]]`` flattened to
(r, rest); the block law is ``H[u] = Σ coef · M Mᵀ`` and its laws are the upper-triangular
entries, row-major.

``load`` requires ``"version": 1``; documents without it (e.g. a bare :meth:`LawSet.to_dict`)
are refused. A reader that meets a newer version must refuse it rather than guess: version 2
may change the meaning of fields.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import torch

from .errors import FxconsError
from .lawset import LawFamily, LawSet, Term, reduce_tensor

SCHEMA_VERSION = 1
FORMAT = "fxcons.laws"

REDUCERS = {"diag": ("sq0", "sq1", "sq"), "linear": ("entry", "sum0", "sum1", "sumlast", "total"),
            "gram": ("gram",)}

_INDEX_SCHEMA = {
    "oneOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
        {"type": "object", "required": ["start", "shape", "strides"], "additionalProperties": False,
         "properties": {"start": {"type": "integer"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                  "minItems": 2, "maxItems": 2},
                        "strides": {"type": "array", "items": {"type": "integer"},
                                    "minItems": 2, "maxItems": 2}}},
    ]
}

_TERM_SCHEMA = {
    "type": "object",
    "required": ["param", "reducer", "coef", "index"],
    "properties": {
        "param": {"type": "string"},
        "reducer": {"enum": sorted({r for rs in REDUCERS.values() for r in rs})},
        "coef": {"type": "number"},
        "sign": {"enum": [-1, 0, 1]},
        "axis": {"type": "integer", "minimum": 0},
        "groups": {"type": "integer", "minimum": 1},
        "slice": {"type": "string"},
        "index": _INDEX_SCHEMA,
    },
}

_FAMILY_SCHEMA = {
    "type": "object",
    "required": ["name", "kind", "exactness", "form", "count", "terms"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "exactness": {"enum": ["exact", "eps"]},
        "form": {"enum": list(REDUCERS)},
        "count": {"type": "integer", "minimum": 0},
        "independent": {"type": ["integer", "null"], "minimum": 0},
        "params": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "string"},
        "note": {"type": "string"},
        "formula": {"type": "string"},
        "terms": {"type": "array", "items": _TERM_SCHEMA, "minItems": 1},
    },
}

#: JSON Schema (draft 2020-12) of a law file.
SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://fxcons.dev/schema/laws-v1.json",
    "title": "fxcons conservation laws",
    "type": "object",
    "required": ["format", "version", "families", "param_shapes"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": SCHEMA_VERSION},
        "fxcons_version": {"type": "string"},
        "model": {
            "oneOf": [
                {"type": "object",
                 "properties": {
                     "spec": {"type": "string"},
                     "frontend": {"type": ["string", "null"]},
                     "head": {"type": ["string", "null"]},
                     "training": {"type": ["boolean", "null"]},
                     "tied": {"type": "object",
                              "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                 }},
                {"type": "string"},  # a model spec only (what `fxcons annotate --json` 0.1.0 writes)
            ],
        },
        "total_laws": {"type": "integer", "minimum": 0},
        "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        "param_shapes": {"type": "object",
                         "additionalProperties": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
        "families": {"type": "array", "items": _FAMILY_SCHEMA},
        "breakers": {
            "type": "array",
            "items": {"type": "object", "required": ["node", "why"],
                      "properties": {"node": {"type": "string"}, "where": {"type": "string"},
                                     "why": {"type": "string"}, "family": {"type": "string"}}},
        },
    },
}


# ---------------------------------------------------------------------------- index arrays
def index_pattern(index: np.ndarray) -> tuple[int, int, int] | None:
    """``(start, a, b)`` when ``index[u, k] == start + a·u + b·k`` for every entry, else None.

    Shared by the emitters to write index arrays compactly (``torch.arange``, slices, sympy
    expressions in the unit index ``u``).
    """
    index = np.asarray(index)
    if index.ndim != 2 or index.size == 0:
        return None
    n, k = index.shape
    s = int(index[0, 0])
    b = int(index[0, 1] - index[0, 0]) if k > 1 else 1
    a = int(index[1, 0] - index[0, 0]) if n > 1 else b * k
    want = s + a * np.arange(n)[:, None] + b * np.arange(k)[None, :]
    return (s, a, b) if np.array_equal(index, want) else None


def encode_index(index: np.ndarray) -> Any:
    pat = index_pattern(index)
    if pat is None and np.asarray(index).size == 0:
        return {"start": 0, "shape": list(np.asarray(index).shape), "strides": [0, 0]}
    if pat is None:
        return np.asarray(index).tolist()
    s, a, b = pat
    return {"start": s, "shape": list(np.asarray(index).shape), "strides": [a, b]}


def decode_index(obj: Any) -> np.ndarray:
    if isinstance(obj, dict):
        (n, k), (a, b) = obj["shape"], obj["strides"]
        return (int(obj["start"]) + int(a) * np.arange(int(n))[:, None]
                + int(b) * np.arange(int(k))[None, :]).astype(np.int64)
    arr = np.asarray(obj, dtype=np.int64)
    if arr.ndim != 2:
        raise ValueError(f"index must be a 2-D array, got {arr.ndim}-D")
    return arr


# ---------------------------------------------------------------------------- descriptions
_SLICE = {"sq0": "Σ {p}[j, ...]²", "sq1": "Σ {p}[:, j, ...]²", "sq": "{p}[j]²", "entry": "{p}[j]",
          "sum0": "Σ {p}[:, j]", "sum1": "Σ {p}[j₀, :, j₁]", "sumlast": "Σ {p}[j, :]", "total": "Σ {p}"}


def term_slice(t: Term) -> str:
    """What ``R[j]`` of a term is, in words (j: a flat position in the reduced parameter)."""
    if t.reducer == "gram":
        return f"rows j of movedim({t.param}, {t.axis}, 0), flattened"
    s = _SLICE[t.reducer].format(p=t.param)
    if t.reducer == "sq1" and t.groups > 1:
        s += f" (over the {t.groups} groups' own output rows)"
    return s


def _lin(s: int, pairs: list[tuple[int, str]]) -> str:
    """'s + a·u − b·k' without zero terms or unit factors."""
    out = str(s) if s else ""
    for c, var in pairs:
        if c == 0:
            continue
        mag = var if abs(c) == 1 else f"{abs(c)}·{var}"
        out = (f"{out} − {mag}" if c < 0 else f"{out} + {mag}") if out else (f"−{mag}" if c < 0 else mag)
    return out or "0"


def _index_words(index: np.ndarray) -> str:
    pat = index_pattern(index)
    if pat is None:
        return "j ∈ index[u]"
    s, a, b = pat
    n, k = index.shape
    if k == 1:
        return f"j = {_lin(s, [(a if n > 1 else 0, 'u')])}"
    return f"j = {_lin(s, [(a if n > 1 else 0, 'u'), (b, 'k')])}, k < {k}"


def family_formula(f: LawFamily) -> str:
    """One-line human-readable formula of a family."""
    parts = []
    for i, t in enumerate(f.terms):
        c = t.coef
        sign = "−" if c < 0 else "+"
        mag = "" if abs(c) == 1 else f"{abs(c):g}·"
        if f.form == "gram":
            body = f"{mag}M{i} M{i}ᵀ"
        else:
            body = f"{mag}{term_slice(t)}"
        parts.append((sign, body))
    s = (parts[0][0] if parts[0][0] == "−" else "") + parts[0][1]
    for sign, body in parts[1:]:
        s += f" {sign} {body}"
    if f.form == "gram":
        ms = "; ".join(f"M{i} = movedim({t.param}, {t.axis}, 0)[index{i}[u]]" for i, t in enumerate(f.terms))
        r = f.terms[0].index.shape[1]
        return f"H[u] = {s} ({r}×{r}, upper triangle); {ms}"
    idx = "; ".join(f"term {i}: {_index_words(t.index)}" for i, t in enumerate(f.terms))
    return f"h[u] = {s} ; {idx}"


# ---------------------------------------------------------------------------- dump
def _term_json(t: Term) -> dict:
    return {"param": t.param, "reducer": t.reducer, "coef": float(t.coef),
            "sign": int(np.sign(t.coef)), "axis": int(t.axis), "groups": int(t.groups),
            "slice": term_slice(t), "index": encode_index(t.index)}


def _family_json(f: LawFamily) -> dict:
    return {"name": f.name, "kind": f.kind, "exactness": f.exactness, "form": f.form,
            "count": int(f.count), "independent": int(f.independent if f.independent is not None else f.count),
            "params": f.params, "where": f.where, "note": f.note, "formula": family_formula(f),
            "terms": [_term_json(t) for t in f.terms]}


def dump_laws(laws: LawSet, model: dict | None = None, breakers: list | None = None) -> dict:
    """The JSON document (a plain dict) of a law set."""
    from . import __version__

    counts = {k: v for k, v in laws.by_kind().items()}
    return {
        "format": FORMAT,
        "version": SCHEMA_VERSION,
        "fxcons_version": __version__,
        "model": model or {"frontend": None, "head": None, "training": None, "tied": {}},
        "total_laws": int(laws.total),
        "counts": {k: int(v) for k, v in counts.items()},
        "param_shapes": {k: [int(x) for x in v] for k, v in laws.param_shapes.items()},
        "families": [_family_json(f) for f in laws.families],
        "breakers": list(breakers or []),
    }


def dump_annotation(ann: Any) -> dict:
    """The JSON document of an :class:`~fxcons.Annotation` (or of a bare :class:`LawSet`)."""
    if isinstance(ann, LawSet):
        return dump_laws(ann)
    model = {"frontend": ann.frontend, "head": ann.head, "training": bool(ann.training),
             "tied": {k: list(v) for k, v in (getattr(ann, "tied", None) or {}).items()}}
    breakers = [{"node": str(b.node), "where": str(b.where), "why": str(b.why),
                 "family": str(getattr(b, "family", ""))} for b in ann.breakers]
    return dump_laws(ann.laws, model, breakers)


def save(ann: Any, path: str | os.PathLike) -> str:
    """Write the JSON document of ``ann`` (Annotation or LawSet) to ``path`` atomically."""
    text = json.dumps(dump_annotation(ann), ensure_ascii=False, indent=1)
    atomic_write(os.fspath(path), text.encode("utf-8"), what="law file")
    return os.fspath(path)


def atomic_write(path: str, data: bytes, what: str = "file") -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A failure leaves no partial file and raises :class:`FxconsError` with a one-line message.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fxcons-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise FxconsError(f"cannot write {what} '{path}': {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _file_mode(path: str) -> int:
    """The mode an ordinary ``open(path, "w")`` would give (keep an existing file's mode)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# ---------------------------------------------------------------------------- load
def _parse(obj: Any) -> dict:
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, bytes):
        obj = obj.decode("utf-8")
    if isinstance(obj, str) and obj.lstrip().startswith(("{", "[")):
        try:
            return json.loads(obj)
        except json.JSONDecodeError as e:
            raise FxconsError(f"law JSON is not valid JSON: {e}") from None
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise FxconsError(f"cannot read law file '{path}': {e.strerror or e}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise FxconsError(f"law file '{path}' is not valid JSON: {e}") from None
    raise FxconsError(f"cannot load laws from a {type(obj).__name__}: give a dict, a JSON string or a path")


def _validate_schema(doc: dict) -> None:
    try:
        import jsonschema
    except ImportError:  # optional: the structural checks below still run
        return
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise FxconsError(f"law file does not match schema v{SCHEMA_VERSION} at {where}: "
                          f"{err.message.splitlines()[0][:200]}")


def _check_family(f: LawFamily, shapes: dict) -> None:
    blocks = f.terms[0].index.shape[0]
    for t in f.terms:
        if t.reducer not in REDUCERS[f.form]:
            raise FxconsError(f"family '{f.name}': reducer '{t.reducer}' is not valid for form '{f.form}'")
        if t.index.shape[0] != blocks:
            raise FxconsError(f"family '{f.name}': terms have different numbers of laws")
        if f.form == "gram" and t.index.shape[1] != f.terms[0].index.shape[1]:
            raise FxconsError(f"family '{f.name}': gram terms have different block sizes")
        if t.param not in shapes:
            raise FxconsError(f"family '{f.name}': parameter '{t.param}' has no entry in param_shapes")
        shape = tuple(shapes[t.param])
        if f.form == "gram":
            if not 0 <= t.axis < max(len(shape), 1):
                raise FxconsError(f"family '{f.name}': axis {t.axis} out of range for '{t.param}' {shape}")
            size = shape[t.axis] if shape else 1
        else:
            try:
                size = reduce_tensor(torch.empty(shape, device="meta"), t.reducer, t.groups).numel()
            except (RuntimeError, ValueError, IndexError):
                raise FxconsError(f"family '{f.name}': reducer '{t.reducer}' does not apply to "
                                  f"'{t.param}' of shape {shape}") from None
        if t.index.size and (t.index.min() < 0 or t.index.max() >= size):
            raise FxconsError(f"family '{f.name}': index out of range for '{t.param}' ({t.reducer}, size {size})")


def load(obj_or_path: Any) -> LawSet:
    """Read a law file (dict, JSON string or path) written by :func:`dump_annotation`.

    Raises :class:`FxconsError` (one line) on unreadable files, other schema versions, or
    documents that do not match :data:`SCHEMA`.
    """
    doc = _parse(obj_or_path)
    if not isinstance(doc, dict):
        raise FxconsError("law JSON must be an object")
    if "version" not in doc:
        raise FxconsError("not an fxcons law file: no 'version' field")
    if doc["version"] != SCHEMA_VERSION:
        raise FxconsError(f"law file has schema version {doc['version']!r}; this fxcons reads version {SCHEMA_VERSION}")
    if doc.get("format", FORMAT) != FORMAT:
        raise FxconsError(f"not an fxcons law file: format is {doc.get('format')!r}")
    _validate_schema(doc)
    try:
        shapes = {k: tuple(int(x) for x in v) for k, v in doc["param_shapes"].items()}
        fams = []
        for fd in doc["families"]:
            terms = [Term(td["param"], td["reducer"], float(td["coef"]), decode_index(td["index"]),
                          int(td.get("axis", 0)), int(td.get("groups", 1))) for td in fd["terms"]]
            fam = LawFamily(fd["name"], fd["kind"], fd["exactness"], fd["form"], terms,
                            fd.get("where", ""), fd.get("independent"), fd.get("note", ""))
            fams.append(fam)
    except (KeyError, TypeError, ValueError) as e:
        raise FxconsError(f"malformed law file: {type(e).__name__}: {e}") from None
    for f, fd in zip(fams, doc["families"]):
        _check_family(f, shapes)
        if fd.get("count", f.count) != f.count:
            raise FxconsError(f"family '{f.name}': count {fd['count']} does not match its index ({f.count})")
    return LawSet(fams, shapes)


__all__ = ["SCHEMA_VERSION", "SCHEMA", "dump_annotation", "dump_laws", "load", "save", "index_pattern",
           "atomic_write", "family_formula"]
