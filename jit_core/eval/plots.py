"""Paper figures and tables of a comparison: loss curves as mean and band over seeds per arm (a run that logged
one point drawn as a marker), a forest plot of each arm's difference to the baseline, and tables as CSV and LaTeX
beside the markdown.

Every figure is written twice, ``<stem>.png`` (for the HTML report) and ``<stem>.pdf`` (vector, for a paper),
through :func:`jit_core.durable.save_figure` (atomic replace, no links followed)."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from jit_core import durable

FORMATS = ("png", "pdf")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png_pdf(fig, stem: Path, dpi: int = 110) -> list[Path]:
    """``fig`` as ``<stem>.png`` and ``<stem>.pdf``; closes the figure."""
    plt = _pyplot()
    try:
        return [durable.save_figure(stem.with_name(f"{stem.name}.{fmt}"), fig, dpi=dpi) for fmt in FORMATS]
    finally:
        plt.close(fig)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def smooth(ys: list[float], frac: float = 0.05) -> list[float]:
    """Exponential moving average with a window of about ``frac`` of the curve (bias-corrected)."""
    alpha = 1.0 / max(1.0, frac * len(ys))
    out, m, w = [], 0.0, 0.0
    for y in ys:
        m, w = (1 - alpha) * m + alpha * y, (1 - alpha) * w + alpha
        out.append(m / w)
    return out


def loss_terms(logs: dict[str, list[dict]]) -> list[str]:
    """The loss keys the logs hold (``loss``, then ``loss/pixel``, then the other ``loss/<term>`` by name)."""
    keys = {k for rows in logs.values() for r in rows for k in r if k == "loss" or k.startswith("loss/")}
    return sorted(keys, key=lambda k: (k != "loss", k != "loss/pixel", k))


def seed_band(runs: Sequence[list[dict]], term: str, x: str = "step") -> tuple[list[float], list[float], list[float],
                                                                               list[float], list[int]]:
    """Mean and min-max band over seeds of ``term``, aligned on the training step.

    ``runs``: one log (rows with ``step``, ``time`` and loss terms) per seed. Returns ``(xs, mean, lo, hi, n)``
    per logged step, where ``n`` is the number of seeds logged at that step; with ``x="time"`` the x value is
    the seeds' mean wall clock at that step."""
    by_step: dict[float, list[tuple[float, float]]] = {}
    for rows in runs:
        for r in rows:
            if _finite(r.get("step")) and _finite(r.get(term)) and (x == "step" or _finite(r.get(x))):
                by_step.setdefault(r["step"], []).append((r[x], r[term]))
    xs, mean, lo, hi, n = [], [], [], [], []
    for step in sorted(by_step):
        pts = by_step[step]
        ys = [p[1] for p in pts]
        xs.append(sum(p[0] for p in pts) / len(pts))
        mean.append(sum(ys) / len(ys))
        lo.append(min(ys))
        hi.append(max(ys))
        n.append(len(ys))
    return xs, mean, lo, hi, n


LOSS_X = ("step", "time")


def _time_unit(arms: dict[str, list[list[dict]]]) -> tuple[str, float]:
    """The wall-clock unit the longest run reads best in: ``(name, seconds per unit)``."""
    tmax = max((r["time"] for runs in arms.values() for rows in runs for r in rows if _finite(r.get("time"))),
               default=0)
    return ("h", 3600.0) if tmax > 7200 else (("min", 60.0) if tmax > 120 else ("s", 1.0))


def draw_loss_term(ax, arms: dict[str, list[list[dict]]], term: str, x: str = "step", div: float = 1.0) -> bool:
    """One loss term on ``ax``, one curve per arm: the mean over its runs (seeds) with the min-max band, both
    smoothed (:func:`smooth`), the raw mean faint. An arm that logged the term at one step only (a very short run)
    is a marker with its min-max bar, so it is never an invisible one-point line. False when no arm logged it."""
    colors = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: list[float] = []
    for i, (arm, runs) in enumerate(arms.items()):
        xs, mean, lo, hi, n = seed_band(runs, term, x)
        if not xs:
            continue
        xs = [v / div for v in xs] if x == "time" else xs
        c = colors[i % len(colors)]
        label = arm if len(runs) == 1 else f"{arm} (n={max(n)})"
        drawn += lo + hi
        if len(xs) == 1:
            ax.errorbar(xs, mean, yerr=[[mean[0] - lo[0]], [hi[0] - mean[0]]], fmt="o", color=c, capsize=3,
                        label=f"{label}, one point (step {xs[0]:g})" if x == "step" else f"{label}, one point")
            continue
        ax.plot(xs, mean, color=c, alpha=0.25, linewidth=0.8)
        ax.plot(xs, smooth(mean), color=c, linewidth=1.6, label=label)
        if max(n) > 1:
            ax.fill_between(xs, smooth(lo), smooth(hi), color=c, alpha=0.2, linewidth=0)
    if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 20:   # a loss falling by decades reads in log scale
        ax.set_yscale("log")
    return bool(drawn)


def plot_loss_bands(arms: dict[str, list[list[dict]]], stem: Path, x: str = "step") -> list[Path]:
    """One subplot per loss term, one curve per arm (:func:`draw_loss_term`: mean over its seeds, min-max band, a
    marker for a run of one logged point); ``x``: ``step`` or ``time`` (wall clock). Written as ``<stem>.png`` and
    ``<stem>.pdf``. ``arms``: arm name -> one ``metrics.jsonl`` log (list of rows) per seed; a single run is an arm
    of one seed."""
    if x not in LOSS_X:
        raise ValueError(f"x={x!r}: loss curves are drawn against 'step' or 'time'")
    plt = _pyplot()
    terms = loss_terms({f"{a}/{i}": rows for a, runs in arms.items() for i, rows in enumerate(runs)}) or ["loss"]
    cols = min(3, len(terms))
    rows_n = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    unit, div = _time_unit(arms)
    for ax, term in zip(axes.flat, terms):
        if draw_loss_term(ax, arms, term, x, div):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(term)
        ax.set_xlabel("step" if x == "step" else f"wall clock ({unit})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    several = any(len(runs) > 1 for runs in arms.values())
    fig.suptitle("mean over seeds, band = min to max (smoothed; raw mean faint)" if several
                 else "smoothed; raw curve faint", fontsize=9)
    fig.tight_layout()
    return save_png_pdf(fig, stem)


def forest_rows(table: dict, metric: str) -> list[tuple[str, float, float | None, float | None, bool]]:
    """``(arm, diff, lo, hi, outside_noise)`` of every non-baseline arm with a verdict on ``metric``."""
    out = []
    for r in table["rows"]:
        v = r["verdicts"].get(metric)
        if r["baseline"] or not v or not _finite(v.get("diff")):
            continue
        lo, hi = v.get("lo"), v.get("hi")
        out.append((r["arm"], v["diff"], lo if _finite(lo) else None, hi if _finite(hi) else None,
                    bool(v.get("outside_noise"))))
    return out


def plot_forest(table: dict, metric: str, baseline: str, stem: Path, label: str | None = None,
                lower_is_better: bool | None = None) -> list[Path]:
    """Each arm's difference to the baseline on ``metric`` with its 95 % interval, a line at 0 (no difference).

    Filled markers: the interval excludes 0 (outside the noise); open markers: within the noise. An arm whose
    interval is unknown is drawn as a bare point."""
    plt = _pyplot()
    rows = forest_rows(table, metric)
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.45 * max(1, len(rows))))
    for y, (_arm, diff, lo, hi, outside) in enumerate(rows):
        err = [[diff - lo], [hi - diff]] if lo is not None and hi is not None else None
        ax.errorbar([diff], [y], xerr=err, fmt="o", color="C0" if outside else "C7", capsize=4,
                    markerfacecolor="C0" if outside else "white")
    if not rows:
        ax.text(0.5, 0.5, "no arm besides the baseline has a verdict", ha="center", va="center",
                transform=ax.transAxes)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(-0.7, max(1, len(rows)) - 0.3)
    ax.invert_yaxis()
    direction = "" if lower_is_better is None else (" (negative = better)" if lower_is_better
                                                    else " (positive = better)")
    ax.set_xlabel(f"{label or metric}: arm - {baseline}{direction}")
    ax.set_title("difference to the baseline, 95 % interval", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_png_pdf(fig, stem)


def csv_text(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: object) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A ``tabular`` (booktabs rules) of the same cells as the markdown table."""
    lines = [r"\begin{tabular}{" + "l" * len(head) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_table(stem: Path, head: Sequence[str], rows: Sequence[Sequence[object]]) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.tex`` of one table."""
    csv_path, tex_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".tex")
    durable.write_text(csv_path, csv_text(head, rows))
    durable.write_text(tex_path, latex_table(head, rows))
    return [csv_path, tex_path]


def plot_metric_vs_cfg(summary: dict, stem: Path) -> list[Path]:
    """An EMA x CFG grid (:func:`jit_core.eval.results.sweep_summary`): the primary metric against the CFG scale,
    one line per weights, the 95 % interval of each point as an error bar, the best point ringed."""
    plt = _pyplot()
    key = summary.get("primary_metric") or "metric"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, ema in enumerate(summary.get("emas") or []):
        pts = sorted((p for p in summary["points"] if p["ema"] == ema and _finite(p.get("value"))),
                     key=lambda p: p["cfg"])
        if not pts:
            continue
        xs, ys = [p["cfg"] for p in pts], [p["value"] for p in pts]
        ivs = [p.get("interval") for p in pts]
        has = [iv is not None and len(iv) == 2 and _finite(iv[0]) and _finite(iv[1]) for iv in ivs]
        # a bootstrap interval of few samples need not contain the point estimate: no bar below 0
        err = [[max(0.0, y - iv[0]) if h else 0.0 for y, iv, h in zip(ys, ivs, has)],
               [max(0.0, iv[1] - y) if h else 0.0 for y, iv, h in zip(ys, ivs, has)]]
        ax.errorbar(xs, ys, yerr=err if any(has) else None, fmt="-o", color=f"C{i}", capsize=3, label=ema)
        for p in pts:
            if p.get("best"):
                ax.plot([p["cfg"]], [p["value"]], "o", markersize=13, markerfacecolor="none", color="black")
    if not ax.lines:
        ax.text(0.5, 0.5, "no point has a value", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8, title="weights", title_fontsize=8)
    ax.set_xlabel("CFG scale")
    ax.set_ylabel(key)
    ax.set_title(f"{key} vs CFG (95 % intervals; ringed: best, chosen on these samples)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png_pdf(fig, stem)


def plot_metric_vs_step(arms: dict[str, list[list[dict]]], metric: str, stem: Path, label: str | None = None,
                        subtitle: str = "") -> list[Path]:
    """A metric against the training step (rows of :func:`jit_core.eval.over_steps.metric_by_step`): per arm the
    mean over its seeds with the min-max band; an arm evaluated at one step only is a marker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (arm, runs) in enumerate(arms.items()):
        xs, mean, lo, hi, n = seed_band(runs, metric)
        if not xs:
            continue
        c = f"C{i}"
        if len(xs) == 1:
            ax.errorbar(xs, mean, yerr=[[mean[0] - lo[0]], [hi[0] - mean[0]]], fmt="o", color=c, capsize=3,
                        label=f"{arm} (n={max(n)}, one step)")
            continue
        ax.plot(xs, mean, "-o", color=c, markersize=3, label=f"{arm} (n={max(n)})")
        if max(n) > 1:
            ax.fill_between(xs, lo, hi, color=c, alpha=0.2, linewidth=0)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluated checkpoint", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel(label or metric)
    ax.set_title("mean over seeds, band = min to max" + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png_pdf(fig, stem)
