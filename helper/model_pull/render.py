"""Human-readable text for what the commands report: `check`'s verdict, `status`, sizes."""

from __future__ import annotations

from model_pull import quant
from model_pull import status as status_mod
from model_pull.check import Report, gib


def human_size(n: float) -> str:
    """1023 B, 1.5 KiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_text(report: Report) -> str:
    q = report.quantization
    lines = [
        f"model    {report.model}",
        f"runtime  {report.runtime.value}",
        f"quant    {q.scheme.value} ({q.method.value}: {q.algo}; from {q.source})"
        + (f", KV {q.kv_cache}" if q.kv_cache else ""),
    ]
    if q.scheme is quant.Scheme.UNKNOWN:
        lines.append(f"         unknown: {dict(q.details).get('why', '')}")
    lines.append(f"weights  {gib(report.weight_bytes)}")
    if report.gpus:
        head = (
            f"{'GPU':<22} {'SM':>5} {'verdict':<11} {'memory':>10} {'needed':>10} "
            f"{'headroom':>10} {'max ctx':>8}"
        )
        lines += ["", head, "-" * len(head)]
        for v in report.gpus:
            f = v.fit
            name = (f"{v.gpu.index}: " if v.gpu.index is not None else "") + v.gpu.name
            lines.append(
                f"{name[:22]:<22} {v.gpu.sm!s:>5} {v.support!s:<11} "
                f"{gib(f.available):>10} {gib(f.weights + f.kv_cache + f.overhead):>10} "
                f"{gib(f.headroom):>10} {f.max_context:>8}"
            )
        t = report.tightest
        assert t is not None
        f = t.fit
        lines.append(
            f"(context {f.context} x parallel {f.parallel}, KV {f.kv_dtype}: "
            f"KV cache {gib(f.kv_cache)}, overhead {gib(f.overhead)})"
        )
    lines.append("")
    lines += [f"- {r}" for r in report.reasons]
    lines += [f"  note: {n}" for n in report.notes]
    overall = report.verdict
    verdict = str(overall) if overall is not None else "no GPU information"
    fits = "" if report.fits is None else (", fits" if report.fits else ", DOES NOT FIT")
    lines.append(f"verdict: {verdict}{fits}")
    return "\n".join(lines)


def status_text(report: status_mod.Report) -> str:
    """Human-readable status, one block per model."""
    lines = []
    for m in report.models:
        if m.entry is None:
            lines.append(f"{m.name}  missing  (nothing at {m.gate})")
        else:
            lines.append(f"{m.name}  present  {m.entry}")
        detail = f"  {m.repo} @ {m.revision}"
        if m.pin_differs:
            detail += f"  (installed: {m.installed_revision}: pull to update)"
        if m.nar_hash:
            detail += f"  narHash {m.nar_hash}"
        if m.pulled_at:
            detail += f"  pulled {m.pulled_at}"
        lines.append(detail)
        if m.caches and m.substitute_path:
            lines.append(f"  caches    asked for {m.substitute_path} before the Hub")
        elif m.caches:
            lines.append(
                f"  caches    not asked: no narHash (model-pull prefetch {m.repo} prints one)"
            )
        for u in m.units:
            state = u.state.describe() if u.state else "unknown (no bus)"
            gpu = "" if report.gpu_error else f"  GPU {human_bytes(u.gpu_bytes or 0)}"
            lines.append(f"  {u.unit}  {state}{gpu}  {serving_text(u)}")
    if not report.models:
        lines.append(f"no models declared in {report.manifest}")
    if report.gpu_error:
        lines.append(f"GPU memory per unit: {report.gpu_error}")
    return "\n".join(lines)


def serving_text(u: status_mod.UnitReport) -> str:
    """'on demand, idle timeout 900 s: idle since 2026-01-02 10:00:00 UTC', 'always on: ...'."""
    mode = f"on demand, idle timeout {u.on_demand.idle_timeout} s" if u.on_demand else "always on"
    if u.serving is None:
        return mode
    since = u.since
    when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
    return f"{mode}: {u.serving}{when}"


def human_bytes(n: int) -> str:
    """512 B, 3.0 GiB: GPU memory."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
