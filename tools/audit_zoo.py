#!/usr/bin/env python
"""Audit fxcons over a model zoo: one row per model, written as markdown and JSON.

    python tools/audit_zoo.py                                # all torchvision classification models
    python tools/audit_zoo.py --zoo timm --limit 10          # the first 10 of a curated timm list
    python tools/audit_zoo.py --zoo hf                       # small Hugging Face configs
    python tools/audit_zoo.py --models resnet18,vgg11_bn --no-verify
    python tools/audit_zoo.py --out docs/audit --stem torchvision --probes 1 --size 64

Every model is built with ``fxcons.specs.load_spec`` and annotated (training mode, the spec's
head) in a subprocess with a time limit, so that no model can crash or hang the audit: a
failure becomes a row with its reason. A row says whether the model was captured, by which
frontend, the capture / analysis seconds, the laws by kind, the oracle's verdict (laws checked,
laws failed, worst ratio; LAWS.md §2) and the most frequent reasons symmetries were broken
(``Annotation.breakers`` grouped by ``why``), or why fxcons refused the model.

Status of a row: ``ok`` (annotated; oracle passed or not run), ``FAIL`` (the oracle rejected
laws), ``refused`` (a one-line ``FxconsError``: the model cannot be captured or specified),
``build`` (the zoo could not build the model), ``crash`` (any other exception inside fxcons: an
engine bug), ``timeout`` / ``killed``.

Writes ``OUT/STEM.md`` and ``OUT/STEM.json`` (default ``docs/audit/audit.*``) after every model;
``--resume`` keeps the rows of an earlier run and audits only the missing models (and, with
``--redo crash,timeout``, the rows with those statuses).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

KINDS = ("rescale", "gl", "scale", "translation", "attention_qk", "attention_vo")
ROW_MARK = "@@AUDIT_ROW@@ "

#: small timm models covering many architecture families (``--limit N`` takes the first N)
TIMM_MODELS = [
    "resnet18", "vit_tiny_patch16_224", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_100",
    "deit_tiny_patch16_224", "regnetx_002", "swin_tiny_patch4_window7_224", "mixer_s16_224",
    "resmlp_12_224", "poolformer_s12", "levit_128s", "ghostnet_100", "repvgg_a0", "dla34",
    "cspresnet50", "nf_resnet26", "eva02_tiny_patch14_224", "mobilevit_xxs", "efficientformer_l1",
    "coat_lite_tiny", "lcnet_050", "tinynet_e", "hrnet_w18_small", "vgg11_bn", "rexnet_100",
    "mnasnet_small", "fastvit_t8", "tiny_vit_5m_224", "edgenext_xx_small", "convnextv2_atto",
    "cait_xxs24_224", "pit_ti_224", "gmlp_ti16_224", "resnest14d", "dpn68", "mobileone_s0",
    "ese_vovnet19b_slim", "pvt_v2_b0", "efficientvit_b0", "densenet121", "regnety_002",
]

#: small Hugging Face configs (``hf:`` specs, built offline from configs)
HF_MODELS = [
    "hf:gpt2?n_layer=2&n_embd=64&n_head=4",
    "hf:gpt2?n_layer=2&n_embd=64&n_head=4&attn=eager",
    "hf:bert?num_hidden_layers=2&hidden_size=64&num_attention_heads=4&intermediate_size=128",
    "hf:vit?num_hidden_layers=2&hidden_size=64&num_attention_heads=4&intermediate_size=128"
    "&image_size=32&patch_size=8&num_labels=10",
    "hf:llama",
    "hf:llama?task=base",
    "hf:t5?num_layers=2&num_decoder_layers=2&d_model=64&d_ff=128&num_heads=4&d_kv=16",
    "hf:roberta", "hf:distilbert", "hf:qwen2", "hf:mistral", "hf:gemma", "hf:opt", "hf:gpt_neox", "hf:phi",
    "hf:bloom", "hf:falcon",
]


# ============================================================================= worker (one model)

def _exc_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def _engine_frame(tb) -> str:
    """The innermost traceback frame inside fxcons (where an engine crash happened)."""
    where = ""
    for fr in traceback.extract_tb(tb):
        if "/fxcons/" in fr.filename or "/passes/" in fr.filename:
            where = f"{Path(fr.filename).parent.name}/{Path(fr.filename).name}:{fr.lineno} ({fr.name})"
    return where


#: input sizes tried (above ``--size``) before falling back to the spec's own default
FALLBACK_SIZES = (96, 128, 160, 224)


def _image_inputs(lm, zoo: str, size: int | None, batch: int):
    """Inputs at ``size`` if the model runs on them; else the smallest of FALLBACK_SIZES that
    works, else the spec's own (with a note saying why)."""
    import torch

    if zoo not in ("torchvision", "timm") or not size or not lm.example_inputs:
        return lm.example_inputs, None
    default = lm.example_inputs[0]
    if default.dim() != 4:
        return lm.example_inputs, None
    model = lm.model
    was_training = model.training
    first_error = None
    model.eval()
    try:
        for s in [size] + [f for f in FALLBACK_SIZES if size < f < default.shape[-1]]:
            x = torch.randn(batch, default.shape[1], s, s, generator=torch.Generator().manual_seed(0))
            try:
                with torch.no_grad():
                    model(x)
            except Exception as e:  # the model needs a larger (or exact) input size
                first_error = first_error or _exc_line(e)[:120]
                continue
            note = None if s == size else f"{size}px failed ({first_error}); used {s}px"
            return (x,), note
    finally:
        model.train(was_training)
    x = torch.randn(batch, *default.shape[1:], generator=torch.Generator().manual_seed(0))
    return (x,), f"{size}px failed ({first_error}); used the model's {default.shape[-1]}px"


def audit_one(spec: str, zoo: str, size: int | None, batch: int, verify: bool, probes: int,
              max_verify_params: int, head: str = "auto") -> dict:
    """Annotate (and verify) one model; every outcome is a row, never an exception."""
    import torch

    import fxcons
    from fxcons.errors import FxconsError
    from fxcons.report import breaker_summary
    from fxcons.specs import load_spec

    torch.manual_seed(0)
    row: dict = {"model": spec.split(":", 1)[1], "spec": spec, "status": "ok", "captured": False}
    t0 = time.perf_counter()
    try:
        lm = load_spec(spec)
    except FxconsError as e:
        return {**row, "status": "refused", "reason": f"spec: {_exc_line(e)}"}
    except Exception as e:  # the zoo's own builder (or a missing optional package)
        return {**row, "status": "build", "reason": f"building the model failed: {_exc_line(e)}"}
    row["build_s"] = round(time.perf_counter() - t0, 3)
    row["params"] = sum(p.numel() for p in lm.model.parameters())
    inputs, note = _image_inputs(lm, zoo, size, batch)
    row["input"] = "x".join(str(s) for s in inputs[0].shape) if inputs else None
    if note:
        row["note"] = note
    use_head = lm.head if head == "auto" else (None if head == "none" else head)
    row["head"] = use_head
    t1 = time.perf_counter()
    try:
        ann = fxcons.annotate(lm.model, inputs, head=use_head, example_kwargs=lm.example_kwargs or None,
                              frontend=lm.frontend)
    except FxconsError as e:
        return {**row, "status": "refused", "reason": _exc_line(e), "annotate_s": round(time.perf_counter() - t1, 3)}
    except Exception as e:
        return {**row, "status": "crash", "reason": _exc_line(e), "where": _engine_frame(e.__traceback__),
                "annotate_s": round(time.perf_counter() - t1, 3)}
    counts = ann.counts()
    row.update(
        captured=True,
        frontend=ann.frontend,
        annotate_s=round(time.perf_counter() - t1, 3),
        capture_s=round(ann.timings.get("capture", 0.0), 3),
        analysis_s=round(ann.timings.get("analysis", 0.0), 3),
        counts={k: counts.get(k, 0) for k in KINDS},
        total=ann.total_laws,
        families=len(ann.families),
        eps_laws=sum(f.count for f in ann.families if f.exactness == "eps"),
        breakers=[{"why": why, "count": n, "example": ex} for why, n, ex in breaker_summary(ann, top=5)],
        breaker_nodes=len(ann.breakers),
    )
    if not verify:
        row["verify"] = {"skipped": "--no-verify"}
    elif ann.total_laws == 0:
        row["verify"] = {"skipped": "no laws"}
    elif row["params"] > max_verify_params:
        row["verify"] = {"skipped": f"{row['params'] / 1e6:.0f}M parameters > --max-verify-params"}
    else:
        t2 = time.perf_counter()
        try:
            rep = ann.verify(probes=probes)
        except Exception as e:
            row["status"] = "crash"
            row["verify"] = {"error": _exc_line(e), "where": _engine_frame(e.__traceback__)}
            return row
        row["verify"] = {
            "checked": rep.checked, "failed": rep.failed, "max_ratio": rep.max_ratio,
            "max_ratio_exact": rep.max_ratio_exact, "invariance": rep.invariance,
            "invariance_ok": rep.invariance_ok, "probes": probes,
            "seconds": round(time.perf_counter() - t2, 3),
            "failing": [{"name": f.name, "count": f.count, "max_ratio": f.max_ratio}
                        for f in rep.families if not f.passed][:10],
        }
        if not rep.ok:
            row["status"] = "FAIL"
    return row


def _worker_main(args) -> int:
    row = audit_one(args.worker, args.zoo, args.size, args.batch, args.verify, args.probes,
                    args.max_verify_params, args.head)
    sys.stdout.write("\n" + ROW_MARK + json.dumps(row) + "\n")
    sys.stdout.flush()
    return 0


# ============================================================================= driver

def zoo_specs(zoo: str, limit: int | None, models: str | None) -> list[str]:
    if models:
        names = [m.strip() for m in models.split(",") if m.strip()]
        specs = [m if ":" in m else f"{zoo}:{m}" for m in names]
    elif zoo == "torchvision":
        import torchvision

        specs = [f"torchvision:{m}" for m in torchvision.models.list_models(module=torchvision.models)]
    elif zoo == "timm":
        specs = [f"timm:{m}" for m in TIMM_MODELS]
    elif zoo == "hf":
        specs = list(HF_MODELS)
    else:
        raise SystemExit(f"unknown zoo {zoo!r}")
    return specs[:limit] if limit else specs


def run_worker(spec: str, args) -> dict:
    """Audit ``spec`` in a fresh interpreter; a crash, a kill or a timeout becomes a row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", spec, "--zoo", args.zoo,
           "--batch", str(args.batch), "--probes", str(args.probes), "--head", args.head,
           "--max-verify-params", str(args.max_verify_params), "--threads", str(args.threads),
           "--verify" if args.verify else "--no-verify"]
    if args.size:
        cmd += ["--size", str(args.size)]
    base = {"model": spec.split(":", 1)[1], "spec": spec, "captured": False}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "reason": f"no result within {args.timeout} s (--timeout)"}
    wall = round(time.perf_counter() - t0, 2)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(ROW_MARK):
            row = json.loads(line[len(ROW_MARK):])
            row["wall_s"] = wall
            return row
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        why = f"killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
        return {**base, "status": "killed", "reason": why, "wall_s": wall}
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return {**base, "status": "crash", "reason": f"worker exited {proc.returncode}: {tail}", "wall_s": wall}


def summarize(rows: list[dict]) -> dict:
    done = [r for r in rows if r.get("captured")]
    verified = [r for r in done if "checked" in r.get("verify", {})]
    reasons = Counter()
    for r in done:
        for b in r.get("breakers", []):
            reasons[b["why"]] += b["count"]
    return {
        "models": len(rows),
        "annotated": len(done),
        "status": dict(Counter(r["status"] for r in rows)),
        "total_laws": sum(r["total"] for r in done),
        "laws_by_kind": {k: sum(r["counts"][k] for r in done) for k in KINDS},
        "models_with_laws": sum(1 for r in done if r["total"]),
        "verified_models": len(verified),
        "laws_checked": sum(r["verify"]["checked"] for r in verified),
        "laws_failed": sum(r["verify"]["failed"] for r in verified),
        "worst_ratio_exact": max((r["verify"]["max_ratio_exact"] for r in verified), default=0.0),
        "worst_ratio": max((r["verify"]["max_ratio"] for r in verified), default=0.0),
        "analysis_s": round(sum(r["analysis_s"] for r in done), 2),
        "top_breakers": reasons.most_common(10),
    }


def _md(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.0e}"


def _oracle_cell(r: dict) -> str:
    v = r.get("verify") or {}
    if "checked" in v:
        mark = "✓" if v["failed"] == 0 else "✗"
        return f"{mark} {v['checked']}/{v['failed']} r≤{_fmt_ratio(v['max_ratio'])}"
    if "error" in v:
        return f"error: {_md(v['error'])}"
    return f"skipped ({_md(v.get('skipped', ''))})" if v else ""


def _reason_cell(r: dict) -> str:
    if not r.get("captured"):
        where = f" [{r['where']}]" if r.get("where") else ""
        return f"**{r['status']}**: {_md(r.get('reason', ''))}{where}"
    parts = [f"{_md(b['why'])} ×{b['count']}" for b in r.get("breakers", [])[:3]]
    if r.get("note"):
        parts.append(f"_input: {_md(r['note'])}_")
    for f in (r.get("verify") or {}).get("failing", [])[:3]:
        parts.append(f"**oracle fails** {_md(f['name'])} (r={f['max_ratio']:.1e})")
    return "; ".join(parts)


def render_markdown(meta: dict, rows: list[dict], summ: dict) -> str:
    k = summ["laws_by_kind"]
    lines = [
        f"# fxcons audit: {meta['zoo']}",
        "",
        "Generated by " + " then ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]]))
        + f" on {meta['date']} (torch {meta['torch']}, "
        f"{meta.get('zoo_version', '')}, python {meta['python']}, {meta['threads']} threads). "
        "Training mode; laws by kind (LAWS.md §3); oracle = LAWS.md §2 "
        f"({meta['probes']} probe(s), float64), shown as `checked/failed r≤worst ratio`.",
        "",
        "## Summary",
        "",
        f"- models: **{summ['models']}**, annotated: **{summ['annotated']}** "
        f"({', '.join(f'{s}: {n}' for s, n in sorted(summ['status'].items()))})",
        f"- laws: **{summ['total_laws']}** in {summ['models_with_laws']} models — "
        + ", ".join(f"{kind} {k[kind]}" for kind in KINDS),
        f"- oracle: {summ['verified_models']} models verified, {summ['laws_checked']} laws checked, "
        f"**{summ['laws_failed']} failed**; worst ratio {_fmt_ratio(summ['worst_ratio'])} "
        f"(exact laws {_fmt_ratio(summ['worst_ratio_exact'])})",
        f"- analysis time (capture + analysis, all models): {summ['analysis_s']:.1f} s",
        "",
        "Most frequent reasons a symmetry was broken (nodes, all models):",
        "",
    ]
    lines += [f"- {_md(why)}: {n}" for why, n in summ["top_breakers"]] or ["- none"]
    lines += [
        "",
        "## Models",
        "",
        "| model | status | frontend | input | params | capture s | analysis s | rescale | gl | scale "
        "| translation | attn qk | attn vo | total | oracle | broken by / reason |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in rows:
        c = r.get("counts") or {}
        cells = [
            f"`{r['model']}`", r["status"], r.get("frontend", ""), r.get("input") or "",
            f"{r['params'] / 1e6:.1f}M" if "params" in r else "",
            f"{r['capture_s']:.2f}" if "capture_s" in r else "",
            f"{r['analysis_s']:.2f}" if "analysis_s" in r else "",
            *[str(c[kk]) if c else "" for kk in KINDS],
            str(r.get("total", "")), _oracle_cell(r), _reason_cell(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def write_outputs(out: Path, stem: str, meta: dict, rows: list[dict]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summ = summarize(rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summ, "rows": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render_markdown(meta, rows, summ))
    return summ


def _meta(args, argv: list[str]) -> dict:
    import torch

    zv = ""
    try:
        if args.zoo == "torchvision":
            import torchvision
            zv = f"torchvision {torchvision.__version__}"
        elif args.zoo == "timm":
            import timm
            zv = f"timm {timm.__version__}"
        elif args.zoo == "hf":
            import transformers
            zv = f"transformers {transformers.__version__}"
    except ImportError:
        zv = f"{args.zoo} not installed"
    return {"zoo": args.zoo, "command": "python tools/audit_zoo.py " + " ".join(argv),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "zoo_version": zv,
            "python": platform.python_version(), "threads": args.threads, "probes": args.probes,
            "size": args.size, "verify": args.verify}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", choices=("torchvision", "timm", "hf"), default="torchvision")
    p.add_argument("--models", help="comma-separated model names (or full specs) instead of the whole zoo")
    p.add_argument("--limit", type=int, help="audit only the first N models")
    p.add_argument("--out", default="docs/audit", help="output folder (default docs/audit)")
    p.add_argument("--stem", default="audit", help="output file names STEM.md / STEM.json (default audit)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True, help="run the oracle")
    p.add_argument("--probes", type=int, default=1, help="oracle probes per model (default 1)")
    p.add_argument("--size", type=int, default=64,
                   help="image size for torchvision/timm (default 64; a model that cannot run on it uses its own)")
    p.add_argument("--batch", type=int, default=4,
                   help="batch of the example input (default 4: with 2, a BatchNorm that sees a 1x1 map "
                        "normalizes 2 values, its gradient is eps-sized and the oracle is unreliable)")
    p.add_argument("--head", choices=("auto", "none", "classification"), default="auto",
                   help="loss assumption: the spec's (auto), none, or a classification head")
    p.add_argument("--max-verify-params", type=int, default=200_000_000,
                   help="skip the float64 oracle above this many parameters (memory; default 200M)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per model (default 900)")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)), help="torch threads per model")
    p.add_argument("--resume", action="store_true", help="keep the rows already in OUT/STEM.json")
    p.add_argument("--redo", default="", help="with --resume: audit again the rows with these statuses "
                                                "(comma-separated, e.g. crash,timeout)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker:
        import torch
        torch.set_num_threads(args.threads)
        return _worker_main(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    specs = zoo_specs(args.zoo, args.limit, args.models)
    out = Path(args.out)
    rows: dict[str, dict] = {}
    if args.resume and (out / f"{args.stem}.json").exists():
        old = json.loads((out / f"{args.stem}.json").read_text())
        redo = {x.strip() for x in args.redo.split(",") if x.strip()}
        rows = {r["spec"]: r for r in old["rows"] if r["spec"] in specs and r["status"] not in redo}
    meta = _meta(args, argv)
    if args.resume and (out / f"{args.stem}.json").exists():
        meta["commands"] = old["meta"].get("commands", [old["meta"]["command"]]) + [meta["command"]]
    console = Console(stderr=True)
    todo = [s for s in specs if s not in rows]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=console) as bar:
        task = bar.add_task(args.zoo, total=len(specs), completed=len(specs) - len(todo), last="")
        for spec in todo:
            bar.update(task, description=f"{args.zoo}: {spec.split(':', 1)[1][:40]}")
            row = run_worker(spec, args)
            rows[spec] = row
            laws = f"{row['total']} laws" if row.get("captured") else row.get("reason", "")[:60]
            bar.update(task, advance=1, last=f"{row['model']}: {row['status']} {laws}")
            write_outputs(out, args.stem, meta, [rows[s] for s in specs if s in rows])
    summ = write_outputs(out, args.stem, meta, [rows[s] for s in specs if s in rows])
    console.print(f"{summ['annotated']}/{summ['models']} annotated, {summ['total_laws']} laws, "
                  f"{summ['laws_failed']} failing of {summ['laws_checked']} checked; "
                  f"status {summ['status']}; wrote {out / (args.stem + '.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
