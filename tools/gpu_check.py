"""One short GPU check of fxcons.monitor: torch.compile + CUDA + monitor, on the CIFAR ResNet-18
and a small Transformer. Prints the figures; exits 0 when all checks pass, 1 otherwise, and
0 with a SKIP line when there is no CUDA device.

    python tools/gpu_check.py            # a few minutes on one GPU, most of it compilation
    python tools/gpu_check.py --quick    # fewer steps, eager only

Checks, per model:
* training with the monitor attached: eager SGD, eager AdamW, and SGD with the module and the
  law kernels compiled;
* no host synchronisation in steady-state steps (torch.cuda.set_sync_debug_mode("error") around
  them: a sync inside the training step or the monitor's hooks raises);
* exact-law orthogonality below the monitor's tolerance (TF32 convolutions are on by default,
  see fxcons.monitor.default_tolerance), SGD one-step prediction error of exact laws;
* step time with and without the monitor (CUDA events; target overhead < 5 % compiled).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fxcons
from fxcons.data import make_dataset
from fxcons.monitor import Monitor


SMALL = False  # --dry-run-cpu: small models


def resnet():
    from fxcons.models import REGISTRY

    return REGISTRY["resnet18_cifar"](width=4 if SMALL else 64, batch=2)


def transformer():
    from fxcons.models import REGISTRY

    if SMALL:
        return REGISTRY["tiny_transformer"](vocab=64, seq_len=16, num_classes=64, batch=2)
    return REGISTRY["tiny_transformer"](vocab=64, seq_len=64, dim=128, heads=4, ff=512, layers=2, num_classes=64,
                                        batch=2)


# (title, factory, data, batch, SGD learning rate)
CASES = [("resnet18_cifar (w64, batch 64, digits 32x32)", resnet, "digits", 64, 0.05),
         ("tiny_transformer (d128, 2 layers, T64, text)", transformer, "text", 64, 0.05)]


def run_one(title, model, example, data, batch, lr, compiled, optimizer, steps, dev) -> dict:
    ann = fxcons.annotate(model, example, head="classification")
    model.to(dev).train()
    with torch.no_grad():
        out_shape = tuple(model(*(e.to(dev) for e in example)).shape)
    vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    ds = make_dataset(data, example[0], out_shape, vocab=vocab).to(dev)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = Monitor(ann, opt, compile=compiled)
    fwd = torch.compile(model) if compiled else model
    batches = ds.batches(batch)

    def step():
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fwd(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(3):
        step()  # compile, first momentum/Adam state
    if cuda:
        torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    sync_error = None
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            step()
    except RuntimeError as e:
        sync_error = str(e).splitlines()[0]
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    times = {True: [], False: []}
    for attached in (False, True, False, True):
        mon.attach() if attached else mon.detach()
        for _ in range(5):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                step()
                b.record()
                b.synchronize()
                times[attached].append(a.elapsed_time(b) / 1e3)
            else:
                t = time.perf_counter()
                step()
                times[attached].append(time.perf_counter() - t)
    mon.attach()
    rep = mon.report()
    t_off, t_on = statistics.median(times[False]), statistics.median(times[True])
    return {"title": title, "compiled": compiled, "optimizer": optimizer, "warmup_s": warm, "sync_error": sync_error,
            "step_ms_without": 1e3 * t_off, "step_ms_with": 1e3 * t_on, "ratio": t_on / t_off, "rep": rep}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="eager only, fewer steps")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="exercise this script on the CPU (eager, 2 steps): no GPU figure is produced")
    args = ap.parse_args(argv)
    if args.dry_run_cpu:
        global SMALL
        SMALL = True
        torch.set_num_threads(1)
        args.quick, args.steps = True, 2
        dev = torch.device("cpu")
        print("# DRY RUN ON CPU with small models (titles name the GPU sizes): CPU figures, not a GPU check")
    elif not torch.cuda.is_available():
        print("SKIP: no CUDA device (torch.cuda.is_available() is False); nothing was checked")
        return 0
    else:
        dev = torch.device("cuda")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"# {name}  torch {torch.__version__}  cudnn.allow_tf32="
          f"{torch.backends.cudnn.allow_tf32}  matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    ok = True
    for title, factory, data, batch, lr in CASES:
        runs = [(False, "sgd"), (False, "adamw")] + ([] if args.quick else [(True, "sgd")])
        for compiled, optimizer in runs:
            model, example = factory()
            r = run_one(title, model, example, data, batch, lr, compiled, optimizer,
                        5 if args.quick else args.steps, dev)
            rep = r["rep"]
            good = rep["ok"] and r["sync_error"] is None
            if optimizer == "sgd":
                good &= (rep["prediction_rel_error_max"] or 0) < 1e-4
            ok &= good
            pe = rep["prediction_rel_error_max"]
            print(f"{'PASS' if good else 'FAIL'} {title} | {'compiled' if compiled else 'eager':8s} | {optimizer:5s} | "
                  f"step {r['step_ms_without']:.2f} ms -> {r['step_ms_with']:.2f} ms with monitor "
                  f"(x{r['ratio']:.3f}) | orth(exact) {rep['orthogonality_max']:.1e} tol {rep['tolerance']:.0e} | "
                  f"orth(eps) {_f(rep['orthogonality_max_eps'])} | pred.err(exact) {_f(pe)} | "
                  f"drift {_f(rep['drift_max'])} | kernels {'compiled' if rep['compiled'] else 'eager'} | "
                  f"warm-up {r['warmup_s']:.0f} s | host sync: {r['sync_error'] or 'none'}"
                  + (f" | flagged {rep['flagged'][:3]}" if rep["flagged"] else ""), flush=True)
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def _f(x):
    return "—" if x is None else f"{x:.1e}"


if __name__ == "__main__":
    sys.exit(main())
