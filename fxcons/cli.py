"""The ``fxcons`` command.

    fxcons annotate torchvision:resnet18 --verify            # table of laws, oracle verdict
    fxcons annotate torchvision:resnet18 --verify --json     # one JSON object
    fxcons annotate models:relu_mlp --python laws.py         # standalone checker
    fxcons annotate my_model.py:build --example-shape 8,3,32,32 --explain
    fxcons annotate "models:relu_mlp?dims=4,6,3" --completeness   # did fxcons find every law?
    fxcons export-onnx torchvision:resnet18 -o laws.onnx [--drift]
    fxcons train models:resnet18_cifar --data digits --optimizer sgd --lr 0.05 --steps 30

Errors on bad input are one line on stderr and a non-zero exit (2), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EPILOG = """model specs:
  torchvision:NAME            torchvision classifier (random weights), e.g. torchvision:resnet18
  timm:NAME                   timm model, pretrained=False, e.g. timm:vit_tiny_patch16_224
  hf:NAME[?k=v&...]           Hugging Face model from a config, e.g. hf:gpt2?n_layer=2&n_embd=64
  models:NAME                 fxcons reference model, e.g. models:resnet18_cifar
  path/to/file.py:Factory     a callable returning a module or (module, example_inputs)

kinds of law: rescale (neuron rescaling, residual streams), scale (normalization scale, eps),
gl (linear bottleneck GL(r)), translation (linear laws), attention_qk / attention_vo (per head)."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="model spec (see below)")
    p.add_argument("--example-shape", help="shape of one random example input, e.g. 1,3,224,224")
    p.add_argument("--head", choices=["classification", "none"], default=None,
                   help="the output feeds a softmax/cross-entropy over its last axis (enables translation laws "
                        "of the logits); default: the spec's own default (none for vision backbones)")
    p.add_argument("--frontend", choices=["auto", "fx", "export"], default=None,
                   help="capture with torch.fx symbolic_trace, torch.export, or auto (fx, then export)")
    p.add_argument("--eval-mode", action="store_true", help="analyse in eval mode (default: training mode)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fxcons", description="Find the conservation laws of gradient-flow "
                                 "training of a PyTorch model (LAWS.md), verify them numerically, emit them.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("annotate", help="find, verify and print the laws of a model", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(a)
    a.add_argument("--verify", action="store_true", help="run the numerical oracle on every law")
    a.add_argument("--probes", type=int, default=2, help="oracle probes (random θ, x, v), default 2")
    a.add_argument("--completeness", action="store_true",
                   help="Lie-algebra count (LAWS.md §5): upper and lower bounds on the number of laws, "
                        "'complete' when fxcons found them all; for small blocks (at most --max-params scalars)")
    a.add_argument("--max-params", type=int, default=None, help="largest model --completeness accepts (default 3000)")
    a.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a.add_argument("--python", metavar="FILE", help="write a standalone Python law checker")
    a.add_argument("--latex", metavar="FILE", help="write the laws as a LaTeX document ('-' for stdout)")
    a.add_argument("--graph", metavar="FILE", help="write the coupling graph (.graphml or .dot)")
    a.add_argument("--explain", action="store_true", help="list every node that broke a symmetry, and why")
    e = sub.add_parser("export-onnx", help="write an ONNX law checker (inputs: parameters, outputs: laws)")
    _add_common(e)
    e.add_argument("-o", "--output", required=True, help="output .onnx path")
    e.add_argument("--drift", action="store_true", help="write the two-point drift graph instead")
    try:
        from . import train

        train.add_parser(sub)
    except ImportError:  # pragma: no cover - train ships with fxcons
        pass
    return ap


def _annotate(args):
    import torch

    from .annotation import annotate
    from .specs import load_spec, parse_shape

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    shape = parse_shape(args.example_shape) if args.example_shape else None
    lm = load_spec(args.spec, shape)
    head = lm.head if args.head is None else (None if args.head == "none" else args.head)
    frontend = args.frontend or lm.frontend
    ann = annotate(lm.model, lm.example_inputs, head=head, example_kwargs=lm.example_kwargs or None,
                   frontend=frontend, training=not args.eval_mode)
    return lm, ann


def cmd_annotate(args) -> int:
    lm, ann = _annotate(args)
    report = ann.verify(probes=args.probes) if args.verify else None
    complete = _completeness(ann, args) if args.completeness else None
    if args.python:
        _write_text(args.python, ann.to_python())
    if args.latex:
        text = ann.to_latex()
        sys.stdout.write(text) if args.latex == "-" else _write_text(args.latex, text)
    if args.graph:
        from .graph import write_graph

        write_graph(ann.coupling_graph(), args.graph)
    if args.json:
        from .report import annotation_json

        out = annotation_json(ann, args.spec)
        if report is not None:
            out["verify"] = report.to_dict()
        if complete is not None:
            out["completeness"] = complete.to_dict()
        print(json.dumps(out, indent=1, default=str))
    else:
        from .report import render_table

        render_table(ann, title=args.spec, verify=report, explain=args.explain, completeness=complete)
    failed = (report is not None and not report.ok) or (complete is not None and not complete.sound)
    return 1 if failed else 0


def _completeness(ann, args):
    """The Lie-algebra count, with a live status line on a terminal (stderr)."""
    from .completeness import MAX_PARAMS, completeness

    kw = {"max_params": args.max_params or MAX_PARAMS}
    if args.json or not sys.stderr.isatty():
        return completeness(ann, **kw)
    from rich.console import Console

    with Console(stderr=True).status("completeness: sampling fields") as status:
        return completeness(ann, progress=lambda msg: status.update(f"completeness: {msg}"), **kw)


def cmd_export_onnx(args) -> int:
    lm, ann = _annotate(args)
    path = ann.to_onnx(args.output, drift=args.drift)
    print(f"wrote {path}: {len(ann.families)} families, {ann.total_laws} laws")
    return 0


def _write_text(path: str, text: str) -> None:
    from .errors import FxconsError

    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise FxconsError(f"cannot write {path}: {e.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    from .errors import FxconsError

    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if args.cmd == "annotate":
            return cmd_annotate(args)
        if args.cmd == "export-onnx":
            return cmd_export_onnx(args)
        if args.cmd == "train":
            from . import train

            return train.run(args)
    except FxconsError as e:
        print(f"fxcons: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fxcons: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
