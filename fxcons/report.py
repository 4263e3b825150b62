"""Human and JSON views of an Annotation."""
from __future__ import annotations

from collections import Counter, defaultdict

from .lawset import KINDS


def annotation_json(ann, model_name: str = "") -> dict:
    """The JSON object of ``fxcons annotate --json`` (schema: fxcons.serialize)."""
    try:
        from .serialize import dump_annotation

        out = dump_annotation(ann)
    except ImportError:  # pragma: no cover - serialize ships with fxcons
        out = {"families": [f.to_dict() for f in ann.families]}
    out.setdefault("frontend", ann.frontend)
    out.setdefault("head", ann.head)
    out.setdefault("training", ann.training)
    out["model"] = model_name or out.get("model", "")
    out["total_laws"] = ann.total_laws
    out["counts"] = ann.counts()
    out["timings"] = {k: round(v, 4) for k, v in ann.timings.items()}
    return out


def breaker_summary(ann, top: int = 5) -> list[tuple[str, int, str]]:
    """(why, how many nodes, an example node) for the most frequent reasons."""
    by = defaultdict(list)
    for b in ann.breakers:
        by[b.why].append(b.where)
    rows = sorted(by.items(), key=lambda kv: -len(kv[1]))[:top]
    return [(why, len(w), w[0]) for why, w in rows]


def render_table(ann, title: str = "", verify=None, explain: bool = False, console=None,
                 completeness=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=title or "conservation laws", show_lines=False)
    t.add_column("module path / family")
    t.add_column("kind")
    t.add_column("exactness")
    t.add_column("laws", justify="right")
    if verify is not None:
        t.add_column("oracle max r", justify="right")
        vr = {f.name: f for f in verify.families}
    for f in sorted(ann.families, key=lambda f: (f.where, f.name)):
        row = [f.name, f.kind, f.exactness, str(f.count)]
        if verify is not None:
            c = vr.get(f.name)
            row.append(f"{c.max_ratio:.1e}" + ("" if c.passed else " FAIL") if c else "-")
        t.add_row(*row)
    console.print(t)
    counts = ann.counts()
    parts = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    console.print(f"[bold]{ann.total_laws}[/bold] scalar laws ({parts or 'none'}) · frontend {ann.frontend}"
                  f" · {'training' if ann.training else 'eval'} mode · head {ann.head or 'none'}")
    if verify is not None:
        status = "[green]passed[/green]" if verify.ok else "[red]FAILED[/red]"
        inv = "" if verify.invariance is None else (
            f", invariance {verify.invariance:.1e}" + ("" if verify.invariance_ok else f" > {verify.invariance_tol:.0e}"))
        console.print(f"oracle: {verify.checked} laws checked, {verify.failed} failed, max ratio "
                      f"{verify.max_ratio:.2e} ({verify.probes} probes{inv}) {status}")
    if completeness is not None:
        c = completeness
        colour = "green" if c.certified else ("red" if not c.sound else "yellow")
        console.print(f"completeness (Lie-algebra count, LAWS.md §5): {c.lower} independent laws emitted, at most "
                      f"{c.upper} exist (D = {c.params}, bracket depth {c.depth}, {c.fields} fields, "
                      f"{c.seconds:.1f} s): [{colour}]{c.verdict}[/{colour}]" + (f" · {c.note}" if c.note else ""))
    if explain:
        console.print("[bold]nodes that broke symmetries[/bold]")
        if not ann.breakers:
            console.print("  none")
        for b in ann.breakers:
            console.print(f"  {b.where}: {b.why}")
    elif ann.breakers:
        top = breaker_summary(ann, 3)
        console.print("symmetries stopped at " + "; ".join(f"{n}× {why}" for why, n, _ in top)
                      + " (--explain lists every node)")


def render_text(ann) -> str:
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    render_table(ann, console=Console(file=buf, width=140, force_terminal=False))
    return buf.getvalue()


__all__ = ["annotation_json", "render_table", "render_text", "breaker_summary", "KINDS", "Counter"]
