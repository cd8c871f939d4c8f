"""The report's pictures: loss curves of single runs (one subplot per loss term, one curve per run; PNG and PDF)
and titled sample panels side by side."""
from __future__ import annotations

from pathlib import Path

from jit_core import durable
from jit_core.eval.plots import loss_terms as loss_terms  # re-exported: the loss helpers live in plots
from jit_core.eval.plots import plot_loss_bands
from jit_core.eval.plots import smooth as smooth


def png_pdf_stem(path: str | Path) -> Path:
    """``path`` without its ``.png`` / ``.pdf`` suffix: a figure is written as both. Another suffix is an error."""
    path = Path(path)
    if path.suffix.lower() not in ("", ".png", ".pdf"):
        raise ValueError(f"{path}: figures are written as PNG and PDF; name the file .png (the PDF goes beside it)")
    return path.with_suffix("") if path.suffix else path


def plot_losses(logs: dict[str, list[dict]], path: str | Path, x: str = "step") -> Path:
    """One subplot per loss term, one curve per run (smoothed, raw curve faint; a run that logged one point is a
    marker); x = ``step`` or ``time``. Written as PNG at ``path`` (``.png`` added when missing) with a PDF beside
    it; returns the PNG. Several seeds of an arm as one curve with a band: :func:`plot_loss_bands`."""
    png, _pdf = plot_loss_bands({name: [rows] for name, rows in logs.items()}, png_pdf_stem(path), x)
    return png


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
