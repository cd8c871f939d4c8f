"""Sample sheets for a paper: rows titled with class names (Fashion-MNIST and digits have them), a per-class
sheet, a CFG strip (the same seeds and labels at several guidance scales) and samples over training steps
(the same seeds and labels at every saved checkpoint). Each is one PNG written through
:func:`jit_core.durable.save_image`."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from jit_core import durable

ROW_TITLE_WIDTH = 96
COLUMN_TITLE_HEIGHT = 16


def class_names(dataset: str, num_classes: int) -> list[str]:
    """The dataset's class names where it has them (Fashion-MNIST, digits), else ``class 0`` ..."""
    from jit_core.data import DIGITS_CLASSES, FASHION_MNIST_CLASSES
    known = {"fashion_mnist": FASHION_MNIST_CLASSES, "fashion-mnist": FASHION_MNIST_CLASSES,
             "digits": DIGITS_CLASSES}.get(dataset.lower())
    return list(known) if known and len(known) == num_classes else [f"class {i}" for i in range(num_classes)]


def titled_rows(rows: Sequence[torch.Tensor], row_titles: Sequence[str], column_titles: Sequence[str] = (),
                scale: int = 1, pad: int = 2):
    """One picture: each row a ``(N, C, H, W)`` uint8 batch, its title on the left; optional column titles."""
    from PIL import Image, ImageDraw

    from jit_core.images import make_grid
    strips = [make_grid(r, nrow=len(r), pad=pad, scale=scale) for r in rows]
    top = COLUMN_TITLE_HEIGHT if column_titles else 0
    width = ROW_TITLE_WIDTH + max(s.width for s in strips)
    canvas = Image.new("RGB", (width, top + sum(s.height for s in strips)), "white")
    draw = ImageDraw.Draw(canvas)
    y = top
    for strip, title in zip(strips, row_titles):
        canvas.paste(strip, (ROW_TITLE_WIDTH, y))
        draw.text((4, y + strip.height // 2 - 6), str(title)[:16], fill="black")
        y += strip.height
    if column_titles:
        cell = (strips[0].width - pad * scale) / max(1, len(column_titles))
        fits = max(1, int(cell // 6))     # Pillow's default font: about 6 px a character
        for i, title in enumerate(column_titles):
            draw.text((ROW_TITLE_WIDTH + int(i * cell) + 2 * scale, 2), str(title)[:fits], fill="black")
    return canvas


def per_class_sheet(run, per_class: int, path: Path, *, seed: int = 0, cfg: float | None = None) -> Path:
    """``per_class`` samples of every class, one row per class titled with its name."""
    n_cls = run.model.cfg.num_classes
    names = class_names(run.config.data.name, n_cls)
    labels = torch.arange(n_cls).repeat_interleave(per_class)
    imgs = _generate(run, labels, seed, cfg)
    return durable.save_image(path, titled_rows(list(imgs.split(per_class)), names, scale=_scale(run)))


def cfg_strip(run, cfgs: Sequence[float], path: Path, *, seed: int = 0, per_class: int = 1) -> Path:
    """The same seeds and labels (``per_class`` of every class) at each CFG scale, one row per scale."""
    n_cls = run.model.cfg.num_classes
    labels = torch.arange(n_cls).repeat_interleave(per_class)
    rows = [_generate(run, labels, seed, float(w)) for w in cfgs]
    names = class_names(run.config.data.name, n_cls)
    return durable.save_image(path, titled_rows(rows, [f"cfg {w:g}" for w in cfgs],
                                                [names[int(c)] for c in labels], scale=_scale(run)))


def cfg_strip_of_run(run_dir, cfgs: Sequence[float], path: Path, *, ema: str = "ema1", seed: int = 0,
                     device="cpu", checkpoint=None, trust_plugins=()) -> Path:
    """:func:`cfg_strip` of a run folder's weights ``ema`` (the latest checkpoint unless ``checkpoint``)."""
    from jit_core.runs import loading
    run = loading.load_run(run_dir, ema=ema, device=device, checkpoint=checkpoint, trust_plugins=trust_plugins)
    return cfg_strip(run, cfgs, path, seed=seed)


def steps_sheet(run_dir, path: Path, *, seed: int = 0, cfg: float | None = None, ema: str = "ema1",
                device="cpu", trust_plugins=()) -> Path:
    """One sample of every class at each saved checkpoint of ``run_dir``, one row per training step."""
    from jit_core.runs import loading
    from jit_core.runs.checkpoint import list_checkpoints
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir} has no complete checkpoint in checkpoints/: train it first")
    rows, titles, names, scale = [], [], [], 1
    for ck in checkpoints:
        run = loading.load_run(run_dir, ema=ema, device=device, checkpoint=ck, trust_plugins=trust_plugins)
        n_cls = run.model.cfg.num_classes
        rows.append(_generate(run, torch.arange(n_cls), seed, cfg))
        titles.append(f"step {run.step}")
        names, scale = class_names(run.config.data.name, n_cls), _scale(run)
    return durable.save_image(path, titled_rows(rows, titles, names, scale=scale))


def _scale(run) -> int:
    return max(1, 48 // run.model.cfg.image_size)


def _generate(run, labels: torch.Tensor, seed: int, cfg: float | None) -> torch.Tensor:
    from jit_core.runs import loading
    return loading.generate(run, labels, cfg=cfg, seed=seed)
