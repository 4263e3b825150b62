"""``fxcons train``: real training with the law monitor attached (LAWS.md §4).

    fxcons train models:resnet18_cifar --data digits --optimizer sgd --lr 0.05 --steps 30 --json
    fxcons train models:tiny_transformer?vocab=32&num_classes=32&seq_len=16 --data text --optimizer adamw

Cross-entropy loss over the model's last axis (the laws are derived with a classification head).
Exit status: 0, or 1 when an exact law's orthogonality residual exceeded its tolerance (the law
is not a law of this model), 2 on bad input (cli.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

OPTIMIZERS = ("sgd", "sgd-momentum", "adamw")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``fxcons`` subcommand parser."""
    from .data import DATASETS

    p = subparsers.add_parser(
        "train", help="train a model and monitor its conservation laws (drift, orthogonality, SGD prediction)",
        description="Train with cross-entropy on a small built-in data set while fxcons.monitor watches every "
                    "law: orthogonality of the gradient, drift since the start, and for SGD the exact one-step "
                    "prediction of LAWS.md §4. Exit 1 if an exact law's orthogonality residual exceeds its "
                    "tolerance.")
    p.add_argument("spec", help="model spec, e.g. models:resnet18_cifar (see `fxcons annotate --help`)")
    p.add_argument("--data", choices=DATASETS, default="synthetic",
                   help="digits (sklearn 8x8, resized), text (stdlib source, characters) or synthetic")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 (SGD) / decoupled (AdamW) weight decay")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum of sgd-momentum (default 0.9)")
    p.add_argument("--clip", type=float, default=None, metavar="NORM", help="clip the gradient norm")
    p.add_argument("--every", type=int, default=1, help="monitor every k-th step (default 1)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model and the law evaluation (first steps pay the compile time)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--tolerance", type=float, default=None,
                   help="orthogonality tolerance of exact laws (default: 1e-4 float32, 1e-8 float64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, max 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``fxcons train``; returns the exit status."""
    import torch

    from .errors import FxconsError

    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.every < 1:
        raise FxconsError("--steps, --batch-size, --every must be >= 1 and --lr > 0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FxconsError("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads or max(1, min(8, os.cpu_count() or 1)))
    torch.manual_seed(args.seed)
    res = train(args.spec, data=args.data, optimizer=args.optimizer, lr=args.lr, steps=args.steps,
                batch_size=args.batch_size, weight_decay=args.weight_decay, momentum=args.momentum,
                clip=args.clip, every=args.every, compile=args.compile, device=device,
                dtype=getattr(torch, args.dtype), tolerance=args.tolerance, seed=args.seed,
                progress=True, quiet_stdout=args.json)
    rep = res["report"]
    if args.json:
        out = {k: v for k, v in res.items() if k != "report"}
        out.update(dict(rep))
        print(json.dumps(out, indent=1, default=_json_default))
    else:
        from rich.console import Console

        con = Console()
        con.print(rep.table)
        con.print(_summary_line(res, rep))
        if rep["flagged"]:
            con.print(f"[bold red]{len(rep['flagged'])} exact law families are not conserved by the gradient "
                      f"(orthogonality > {rep['tolerance']:.0e}):[/] {', '.join(rep['flagged'][:5])}")
    return 0 if rep["ok"] else 1


def train(spec: str, data: str = "synthetic", optimizer: str = "sgd", lr: float = 0.05, steps: int = 100,
          batch_size: int = 64, weight_decay: float = 0.0, momentum: float = 0.9, clip: float | None = None,
          every: int = 1, compile: bool = False, device=None, dtype=None, tolerance: float | None = None,
          seed: int = 0, progress: bool = False, quiet_stdout: bool = False, model_and_inputs=None) -> dict:
    """Train ``spec`` (or ``model_and_inputs=(model, example_inputs)``) with the monitor attached.

    Returns a dict: run settings, losses, timings and ``report`` (the :class:`MonitorReport`).
    """
    import torch
    import torch.nn.functional as F

    from .annotation import annotate
    from .data import make_dataset
    from .errors import FxconsError
    from .monitor import monitor

    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    t0 = time.perf_counter()
    if model_and_inputs is None:
        from .specs import load_spec

        lm = load_spec(spec)
        model, example, frontend, kwargs = lm.model, lm.example_inputs, lm.frontend, lm.example_kwargs or None
    else:
        (model, example), frontend, kwargs = model_and_inputs, "auto", None
    if not example:
        raise FxconsError(f"{spec} gives no example inputs; training needs their shape")
    model = model.to(dtype).train()
    example = tuple(e.to(dtype) if e.is_floating_point() else e for e in example)
    ann = annotate(model, example, head="classification", example_kwargs=kwargs, frontend=frontend)
    t_annotate = time.perf_counter() - t0
    with torch.no_grad():
        out_shape = tuple(model(*example).shape)
    vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    ds = make_dataset(data, example[0], out_shape, vocab=vocab, seed=seed).to(device)
    model.to(device)

    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd-momentum":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise FxconsError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    mon = monitor(ann, opt, every=every, compile=compile, tolerance=tolerance)
    fwd = torch.compile(model) if compile else model
    K = ds.num_classes

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fwd(x).reshape(-1, K), y.reshape(-1))
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return loss.detach()

    losses = []
    batches = ds.batches(batch_size, seed)
    t1 = time.perf_counter()
    first_step_s = None
    with _progress(progress, steps, spec, quiet_stdout) as bar:
        refresh = max(1, steps // 25)
        for k in range(steps):
            x, y = next(batches)
            losses.append(step(x, y))
            if k == 0:
                first_step_s = time.perf_counter() - t1
            if bar is not None and (k % refresh == 0 or k == steps - 1):
                live = mon.latest()
                bar.update(bar.task_ids[0], completed=k + 1, loss=float(losses[-1]),
                           orth=_fmt(live["orthogonality"]), drift=_fmt(live["drift"]),
                           perr=_fmt(live["prediction_error"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t1
    rep = mon.report()
    mon.detach()
    L = torch.stack(losses).to("cpu", torch.float64)
    return {
        "spec": spec, "data": data, "data_note": ds.note, "optimizer": optimizer, "lr": lr, "steps": steps,
        "batch_size": batch_size, "weight_decay": weight_decay, "momentum": momentum if optimizer == "sgd-momentum"
        else None, "clip": clip, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "compile": compile, "seed": seed, "threads": torch.get_num_threads(),
        "loss_first": float(L[0]), "loss_final": float(L[-1]), "loss_finite": bool(torch.isfinite(L).all()),
        "annotate_s": round(t_annotate, 3), "train_s": round(t_train, 3),
        "first_step_s": round(first_step_s or 0.0, 3),
        "step_s": round((t_train - (first_step_s or 0.0)) / max(1, steps - 1), 5),
        "report": rep,
    }


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, steps: int, title: str, to_stderr: bool):
    if not enabled:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Bar(Progress):
        def __enter__(self):
            super().__enter__()
            self.add_task(title, total=steps, loss=float("nan"), orth="—", drift="—", perr="—")
            return self

    return _Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  orth {task.fields[orth]}  drift {task.fields[drift]}  "
                           "pred.err {task.fields[perr]}"),
                console=Console(stderr=True) if to_stderr else Console(), transient=False)


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _summary_line(res: dict, rep: dict) -> str:
    parts = [f"{res['steps']} steps of {res['optimizer']} (lr {res['lr']}) on {res['data']}",
             f"loss {res['loss_first']:.3f} → {res['loss_final']:.3f}",
             f"orthogonality (exact) {_fmt(rep['orthogonality_max'])}",
             f"drift max {_fmt(rep['drift_max'])}"]
    if rep["prediction_rel_error_max"] is not None:
        parts.append(f"prediction error {_fmt(rep['prediction_rel_error_max'])}")
    else:
        parts.append("prediction: not predicted")
    parts.append(f"{res['step_s'] * 1e3:.1f} ms/step")
    return "; ".join(parts)


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m fxcons.train ...``), same as ``fxcons train ...``."""
    from .errors import FxconsError

    ap = argparse.ArgumentParser(prog="fxcons")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except FxconsError as e:
        print(f"fxcons: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
