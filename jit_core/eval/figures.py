"""The report's pictures: loss curves (one subplot per loss term, one line per run) and titled sample
panels side by side."""
from __future__ import annotations

import math
from pathlib import Path

from jit_core import durable


def smooth(ys: list[float], frac: float = 0.05) -> list[float]:
    """Exponential moving average with a window of about ``frac`` of the curve (bias-corrected)."""
    alpha = 1.0 / max(1.0, frac * len(ys))
    out, m, w = [], 0.0, 0.0
    for y in ys:
        m, w = (1 - alpha) * m + alpha * y, (1 - alpha) * w + alpha
        out.append(m / w)
    return out


def plot_losses(logs: dict[str, list[dict]], path: str | Path, x: str = "step") -> Path:
    """One subplot per loss term, one line per run (smoothed, raw curve faint); x = ``step`` or ``time``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    terms = loss_terms(logs) or ["loss"]
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    tmax = max((r["time"] for rows_ in logs.values() for r in rows_ if isinstance(r.get("time"), (int, float))
                and math.isfinite(r["time"])), default=0)
    unit, div = ("h", 3600.0) if tmax > 7200 else (("min", 60.0) if tmax > 120 else ("s", 1.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, term in zip(axes.flat, terms):
        for i, (name, rows_) in enumerate(logs.items()):
            pts = [(r.get(x), r.get(term)) for r in rows_ if isinstance(r.get(term), (int, float))
                   and isinstance(r.get(x), (int, float)) and math.isfinite(r[term])]
            if not pts:
                continue
            xs = [p[0] / div if x == "time" else p[0] for p in pts]
            ys = [p[1] for p in pts]
            c = colors[i % len(colors)]
            ax.plot(xs, ys, color=c, alpha=0.25, linewidth=0.8)
            ax.plot(xs, smooth(ys), color=c, linewidth=1.6, label=name)
        ax.set_title(term)
        ax.set_xlabel("step" if x == "step" else f"wall clock ({unit})")
        ax.grid(alpha=0.3)
        if ax.lines:
            ys_all = [y for ln in ax.lines for y in ln.get_ydata()]
            if min(ys_all) > 0 and max(ys_all) / min(ys_all) > 20:
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    fig.tight_layout()
    try:
        return durable.save_figure(Path(path), fig, dpi=110)
    finally:
        plt.close(fig)


def titled_panel(img, title: str):
    """A grid image with its run name above it."""
    from PIL import Image, ImageDraw
    bar = 22
    canvas = Image.new("RGB", (max(img.width, 8 * len(title) + 10), img.height + bar), "white")
    canvas.paste(img, (0, bar))
    ImageDraw.Draw(canvas).text((4, 5), title, fill="black")
    return canvas


def side_by_side(panels: list, path: str | Path, gap: int = 12) -> Path:
    from PIL import Image
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (max(1, width), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return durable.save_image(Path(path), canvas)


def placeholder(text: str, size: int = 160):
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size, size), (235, 235, 235))
    ImageDraw.Draw(img).text((6, size // 2 - 6), text[:24], fill="black")
    return img


def loss_terms(logs: dict[str, list[dict]]) -> list[str]:
    keys = {k for rows in logs.values() for r in rows for k in r if k == "loss" or k.startswith("loss/")}
    return sorted(keys, key=lambda k: (k != "loss", k != "loss/pixel", k))
