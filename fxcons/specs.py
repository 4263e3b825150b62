"""Model specs on the command line -> (model, example inputs, default head).

* ``torchvision:NAME``       torchvision classification model, random weights
* ``timm:NAME``              timm model, ``pretrained=False``
* ``hf:NAME[?key=val&...]``  Hugging Face transformers model built from a config (no network);
                             options override config fields, e.g. ``hf:gpt2?n_layer=2&n_embd=64``
* ``models:NAME``            a reference model of ``fxcons.models``
* ``path/to/file.py:Factory`` a callable returning a module, or (module, example_inputs)
"""
from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from .errors import SpecError


@dataclass
class LoadedModel:
    model: nn.Module
    example_inputs: tuple | None
    head: str | None = None
    example_kwargs: dict = field(default_factory=dict)
    frontend: str = "auto"
    name: str = ""


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise SpecError(f"--example-shape must be comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise SpecError(f"--example-shape must be positive integers, got {text!r}")
    return shape


def load_spec(spec: str, example_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Resolve a model spec (see module docstring)."""
    if ":" not in spec:
        raise SpecError(f"model spec {spec!r} has no source: use torchvision:NAME, timm:NAME, hf:NAME, "
                        "models:NAME or path/to/file.py:Factory")
    if spec.endswith(".py") or ".py:" in spec:
        path, _, factory = spec.rpartition(":")
        lm = _from_file(path, factory)
    else:
        src, _, rest = spec.partition(":")
        name, _, query = rest.partition("?")
        opts = _parse_opts(query)
        if src == "torchvision":
            lm = _torchvision(name, opts)
        elif src == "timm":
            lm = _timm(name, opts)
        elif src == "hf":
            from .hf import build_hf

            lm = build_hf(name, opts)
        elif src == "models":
            lm = _reference(name, opts)
        else:
            raise SpecError(f"unknown model source {src!r} in {spec!r} (torchvision, timm, hf, models, or a .py file)")
    lm.name = spec
    if example_shape is not None:
        lm.example_inputs = (torch.randn(*example_shape),)
    return lm


def _parse_opts(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out[k] = _literal(v)
    return out


def _literal(v: str) -> Any:
    """An option value: int, float, bool, a comma list of those (``dims=4,6,3``), else the string."""
    if "," in v:
        return tuple(_literal(x) for x in v.split(","))
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _torchvision(name: str, opts: dict) -> LoadedModel:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise SpecError(f"torchvision has no model named {name!r} (see torchvision.models.list_models())") from None
    kwargs = dict(weights=None, **opts)
    if name.startswith("inception") or name.startswith("googlenet"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = builder(**kwargs)
    size = 299 if name.startswith("inception") else 224
    return LoadedModel(model, (torch.randn(2, 3, size, size),))


def _timm(name: str, opts: dict) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise SpecError("timm is not installed: pip install 'fxcons[zoo]'") from None
    try:
        model = timm.create_model(name, pretrained=False, **opts)
    except (RuntimeError, TypeError, ValueError, AssertionError) as e:
        raise SpecError(f"timm cannot build {name!r} with {opts}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return LoadedModel(model, (torch.randn(2, *_timm_input_size(model, opts)),))


def _timm_input_size(model: nn.Module, opts: dict) -> tuple[int, ...]:
    """(C, H, W) the built model expects: its pretrained config, overridden by ``img_size`` /
    ``in_chans`` options (``timm:vit_tiny_patch16_224?img_size=32``)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    c, h, w = cfg.get("input_size", (3, 224, 224))
    size = opts.get("img_size")
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = size
    return int(opts.get("in_chans", c)), int(h), int(w)


def _reference(name: str, opts: dict) -> LoadedModel:
    from fxcons.models import REGISTRY

    if name not in REGISTRY:
        raise SpecError(f"no reference model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    try:
        model, inputs = REGISTRY[name](**opts)
    except (TypeError, ValueError) as e:  # an unknown option or a value of the wrong kind
        doc = inspect.signature(REGISTRY[name])
        raise SpecError(f"models:{name} cannot be built with {opts}: {e} (options: {doc})") from None
    return LoadedModel(model, inputs)


def _from_file(path: str, factory: str) -> LoadedModel:
    if not os.path.isfile(path):
        raise SpecError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"fxcons_user_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise SpecError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    if not factory or not hasattr(mod, factory):
        names = [n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                 and (inspect.isfunction(v) or (inspect.isclass(v) and issubclass(v, nn.Module)))
                 and getattr(v, "__module__", None) == mod.__name__]
        raise SpecError(f"{path} has no factory {factory!r}; candidates: {', '.join(names) or 'none'}")
    try:
        obj = getattr(mod, factory)()
    except Exception as e:
        raise SpecError(f"calling {path}:{factory}() failed: {type(e).__name__}: {e}") from None
    inputs = None
    if isinstance(obj, tuple):
        obj, inputs = obj[0], obj[1]
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
    if not isinstance(obj, nn.Module):
        raise SpecError(f"{path}:{factory}() returned {type(obj).__name__}, expected an nn.Module")
    if inputs is None:
        inputs = getattr(obj, "example_inputs", None)
        if callable(inputs):
            inputs = inputs()
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
    return LoadedModel(obj, inputs)
