#!/usr/bin/env python
"""How much slower is ``fxcons.annotate`` than plain graph capture?

    python tools/bench_annotate.py                      # resnet50, resnet152, vit_b_16, GPT-2 (12 layers)
    python tools/bench_annotate.py --models torchvision:resnet18 --repeats 3 --json bench.json

For every model (a ``fxcons.specs`` spec) this times, in the same process and with
``torch.set_num_threads(1)``:

* **annotate**: ``fxcons.annotate(model, example_inputs)``, capture included (fxcons's own split
  into capture and analysis is reported too);
* **baseline**: the plain capture of the frontend fxcons used for that model —
  ``torch.fx.symbolic_trace(model)`` for fx-captured models, ``torch.export.export(model, args,
  strict=False)`` for export-captured ones;

and prints the medians of ``--repeats`` runs and the ratio annotate / baseline, plus, for every
model, the ratio against a plain ``torch.export`` (the capture users of torch.compile and
torch.export already pay). A model that cannot be built or annotated is a row with its reason,
never a crash.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch

DEFAULT_MODELS = ["torchvision:resnet50", "torchvision:resnet152", "torchvision:vit_b_16", "hf:gpt2?n_layer=12"]


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:200] if s else ''}"


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def baseline_capture(frontend: str, model, args: tuple, kwargs: dict):
    """The plain capture that corresponds to fxcons's frontend for this model."""
    if frontend == "fx":
        return torch.fx.symbolic_trace(model)
    return torch.export.export(model, args, kwargs=kwargs or None, strict=False)


def bench_one(spec: str, repeats: int) -> dict:
    import fxcons
    from fxcons.specs import load_spec

    row: dict = {"spec": spec}
    try:
        lm = load_spec(spec)
    except Exception as e:
        return {**row, "error": f"build: {_first_line(e)}"}
    model, args, kwargs = lm.model, tuple(lm.example_inputs or ()), dict(lm.example_kwargs or {})
    row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    run = lambda: fxcons.annotate(model, args, head=lm.head, example_kwargs=kwargs or None,  # noqa: E731
                                  frontend=lm.frontend)
    try:
        ann = run()  # warm-up (imports, caches) and the frontend fxcons picks
    except Exception as e:
        return {**row, "error": f"annotate: {_first_line(e)}"}
    row.update(frontend=ann.frontend, laws=ann.total_laws)
    splits = []

    def timed_annotate():
        splits.append(run().timings)

    ann_t = _time(timed_annotate, repeats)
    try:
        baseline_capture(ann.frontend, model, args, kwargs)  # warm-up
        base_t = _time(lambda: baseline_capture(ann.frontend, model, args, kwargs), repeats)
    except Exception as e:
        return {**row, "annotate_s": statistics.median(ann_t),
                "error": f"baseline {ann.frontend}: {_first_line(e)}"}
    row.update(
        baseline="torch.fx.symbolic_trace" if ann.frontend == "fx" else "torch.export.export",
        baseline_s=statistics.median(base_t),
        annotate_s=statistics.median(ann_t),
        capture_s=statistics.median(s["capture"] for s in splits),
        analysis_s=statistics.median(s["analysis"] for s in splits),
        repeats=repeats,
        annotate_all_s=[round(t, 4) for t in ann_t],
        baseline_all_s=[round(t, 4) for t in base_t],
    )
    row["ratio"] = row["annotate_s"] / row["baseline_s"]
    if ann.frontend == "export":
        row["export_s"] = row["baseline_s"]
    else:  # the other yardstick: a plain torch.export of the same model
        try:
            baseline_capture("export", model, args, kwargs)  # warm-up
            row["export_s"] = statistics.median(_time(lambda: baseline_capture("export", model, args, kwargs), repeats))
        except Exception as e:
            row["export_error"] = _first_line(e)
    if "export_s" in row:
        row["ratio_export"] = row["annotate_s"] / row["export_s"]
    return row


def render(rows: list[dict]) -> str:
    head = (f"{'model':34} {'frontend':8} {'laws':>7} {'baseline':>24} {'base s':>8} {'annotate s':>10} "
            f"{'(capture':>9} {'analysis)':>9} {'ratio':>7} {'export s':>9} {'vs export':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "ratio" not in r:
            lines.append(f"{r['spec'][:34]:34} {'':8} {'':>7} {r.get('error', '')}")
            continue
        lines.append(f"{r['spec'][:34]:34} {r['frontend']:8} {r['laws']:>7} {r['baseline']:>24} "
                     f"{r['baseline_s']:8.3f} {r['annotate_s']:10.3f} {r['capture_s']:9.3f} "
                     f"{r['analysis_s']:9.3f} {r['ratio']:7.1f}x "
                     + (f"{r['export_s']:9.3f} {r['ratio_export']:8.2f}x" if "ratio_export" in r else f"{'-':>9} {'-':>9}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated specs (default: " + ", ".join(DEFAULT_MODELS) + ")")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch.set_num_threads({args.threads}); torch {torch.__version__}; median of {args.repeats} runs",
          flush=True)
    specs = [s.strip() for s in args.models.split(",")] if args.models else DEFAULT_MODELS
    rows = []
    for spec in specs:
        rows.append(bench_one(spec, args.repeats))
        r = rows[-1]
        print(f"  {spec}: " + (f"{r['ratio']:.1f}x ({r['annotate_s']:.2f} s vs {r['baseline_s']:.2f} s)"
                               if "ratio" in r else r["error"]), flush=True)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
