"""Training-step time of the CIFAR ResNet-18 with and without fxcons.monitor (every step).

    python tools/bench_monitor.py                      # width 64, batch 64, eager + compiled
    python tools/bench_monitor.py --modes eager --steps 2 --rounds 2 --width 16

Runs torch.set_num_threads(1) by default (the figures are per core and less noisy on a shared
machine). For each mode (eager: plain module and eager law kernels; compiled: torch.compile'd
module and compiled law kernels) it warms up (compilation), then alternates rounds of ``--steps``
steps without and with the monitor attached (same optimizer, same data) and reports the median
step times, their ratio, and the host time spent inside the monitor's hooks per step (on CPU
that is the overhead itself; on CUDA the kernels run asynchronously and the ratio is the measure).
Target: overhead < 5 %.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fxcons
from fxcons.monitor import Monitor


def build(width: int, batch: int, device: torch.device):
    from fxcons.models import REGISTRY

    model, example = REGISTRY["resnet18_cifar"](width=width)
    ann = fxcons.annotate(model, example, head="classification")
    model.to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return model, ann, x, y


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_mode(mode: str, args, device) -> dict:
    model, ann, x, y = build(args.width, args.batch, device)
    fwd = torch.compile(model) if mode == "compiled" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=args.momentum, weight_decay=5e-4)
    mon = Monitor(ann, opt, compile=(mode == "compiled"))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fwd(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # compiles the model and the law kernels (monitor attached)
        step()
    sync(device)
    warm = time.perf_counter() - t0
    mon.detach()
    step()  # also warm without hooks
    sync(device)
    off, on, hook = [], [], []
    for _ in range(args.rounds):
        for attached, out in ((False, off), (True, on)):
            if attached:
                mon.attach()
            h0 = mon.hook_seconds
            for _ in range(args.steps):
                t = time.perf_counter()
                step()
                sync(device)
                out.append(time.perf_counter() - t)
            if attached:
                hook.append((mon.hook_seconds - h0) / args.steps)
                mon.detach()
    rep = mon.report()
    t_off, t_on = statistics.median(off), statistics.median(on)
    return {"mode": mode, "warmup_s": round(warm, 2), "step_s_without": t_off, "step_s_with": t_on,
            "ratio": t_on / t_off, "hook_s_per_step": statistics.median(hook),
            "hook_fraction": statistics.median(hook) / t_off, "monitored_steps": rep["steps"],
            "compiled_kernels": rep["compiled"], "laws": rep["laws"],
            "orthogonality_max": rep["orthogonality_max"], "prediction_rel_error_max": rep["prediction_rel_error_max"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating without/with rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0: plain SGD)")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# torch.set_num_threads({args.threads}); device {device}; torch {torch.__version__}; "
          f"CIFAR ResNet-18 width {args.width}, batch {args.batch}, SGD(momentum={args.momentum}, wd=5e-4); "
          f"monitor every step", file=sys.stderr)
    results = []
    for mode in args.modes.split(","):
        r = bench_mode(mode, args, device)
        results.append(r)
        print(f"{mode:9s} without {r['step_s_without'] * 1e3:9.1f} ms  with {r['step_s_with'] * 1e3:9.1f} ms  "
              f"ratio {r['ratio']:.3f}  hooks {r['hook_s_per_step'] * 1e3:7.1f} ms/step "
              f"({100 * r['hook_fraction']:.1f} % of a step)  warm-up {r['warmup_s']:.0f} s", flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
