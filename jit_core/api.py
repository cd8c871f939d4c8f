"""Python API for scripts and notebooks: build or load a model, predict x, sample images, export, push.

A notebook's whole workflow, each function calling what the matching ``jit`` command calls (docs/api.md,
examples/notebook/quickstart.ipynb)::

    from jit_core import api
    run = api.train("tiny", "runs/a", {"train.max_steps": 20})   # jit train; returns the loaded run (EMA1)
    rows = api.read_metrics(run)                                 # metrics.jsonl: one dict per logged step
    api.plot_losses([run, "runs/b"])                             # loss curves (a PIL image, shown inline)
    api.sample_grid(run, cfg=2.0)                                # jit sample's grid (a PIL image)
    result = api.evaluate(run, num_images=100)                   # jit evaluate: metrics with 95 % intervals
    report = api.compare([run, "runs/b"], "reports/ab")          # jit compare: verdict, figures, index.html

Loading and sampling:

    from jit_core import api
    run = api.load_run("runs/tiny")                    # EMA1 weights, config, plugins
    run = api.load_run("hf://OWNER/REPO")              # a run `jit push` uploaded (offline: from the cache)
    x_hat = run.model(z, t, y).pixel                   # x-prediction (JiTOutput: .x_hat per stream)
    images = api.generate(run, torch.arange(10), cfg=2.0, seed=0)   # uint8 (N, C, H, W)

Interop: ``api.export_run(run, "checkpoint-last.pth")`` (the official layout, ``jit export``) and
``api.push(run, "hf://OWNER/REPO")`` (``jit push``: weights, config and a model card on the Hub).

A facade: loading lives in :mod:`jit_core.runs.loading` (and :mod:`jit_core.runs.hubrun` for ``hf://``),
generation in :mod:`jit_core.diffusion.generate` (``generate`` is its one sampling call,
:func:`~jit_core.diffusion.generate.generate_images`, for a loaded run; ``SampleSpec`` holds the settings),
export and push in :mod:`jit_core.runs.export` and :mod:`jit_core.runs.push`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from jit_core.config import Config, check_device, flatten
from jit_core.diffusion.generate import SampleSpec, autocast_for, generate_images, initial_noise
from jit_core.model import PIXEL
from jit_core.runs import hub
from jit_core.runs.export import export_run
from jit_core.runs.hubrun import load_hub_run
from jit_core.runs.loading import LoadedRun, build_model_for, generate, load_run_config
from jit_core.runs.loading import load_run as _load_run_folder
from jit_core.runs.push import push

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["LoadedRun", "load_run", "load_run_config", "build_model_for", "generate", "generate_images", "SampleSpec",
           "initial_noise", "autocast_for", "PIXEL",
           "train", "evaluate", "compare", "read_metrics", "plot_losses", "sample_grid", "resolve_config",
           "override_texts", "run_folder", "RunRef", "Overrides", "export_run", "push"]

log = logging.getLogger("jit")

RunRef = Union[str, os.PathLike, LoadedRun]     # a run folder, or a run returned by load_run / train
Overrides = Union[Mapping[str, Any], Iterable[str], str, None]   # {"train.max_steps": 20} or ["train.max_steps=20"]


# ----------------------------------------------------------------------------------- runs and overrides
def load_run(run: str | os.PathLike, ema: str = "ema1", device="cpu", checkpoint: str | os.PathLike | None = None,
             trust_plugins=()) -> LoadedRun:
    """A run folder (its newest verified checkpoint, or ``checkpoint``) or a pushed run ``hf://OWNER/REPO``,
    with the chosen weights (``model``, ``ema1``, ``ema2``), in eval mode.

    ``run = api.load_run("hf://OWNER/REPO")``
    """
    if hub.is_hub_name(run):
        if checkpoint is not None:
            raise ValueError(f"checkpoint= does not apply to {run}: a pushed run holds one checkpoint")
        return load_hub_run(str(run), ema=ema, device=device, trust_plugins=trust_plugins)
    return _load_run_folder(Path(run), ema=ema, device=device, checkpoint=checkpoint, trust_plugins=trust_plugins)


def run_folder(run: RunRef) -> Path:
    """The folder of a run given as a path or as a loaded run.

    ``api.run_folder(api.load_run("runs/a"))  # Path("runs/a")``
    """
    if isinstance(run, LoadedRun):
        return Path(run.run_dir)
    if isinstance(run, str) and run.startswith("hf://"):
        raise ValueError(f"{run} is a Hub name, not a run folder: load it first, api.load_run({run!r}), and pass "
                         "the loaded run")
    if isinstance(run, (str, os.PathLike)):
        return Path(run)
    raise TypeError(f"a run is a run folder (str or Path) or a run from api.load_run / api.train, "
                    f"not {type(run).__name__}")


def _trusted(runs: Iterable[RunRef], trust_plugins: Sequence[str] | bool) -> Sequence[str] | bool:
    """``trust_plugins`` plus the plugins of the loaded runs among ``runs``: loading them was trusting them."""
    if trust_plugins is True:
        return True
    loaded = [name for run in runs if isinstance(run, LoadedRun) for name in run.config.plugins]
    return tuple(dict.fromkeys([*(trust_plugins or ()), *loaded]))


def _as_text(value: Any) -> str:
    """A Python value as the command line writes it (parsed back by the config's typed coercion)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)      # round-trips exactly
    return str(value)


def override_texts(overrides: Overrides = None, **more: Any) -> list[str]:
    """Overrides as the command line's ``KEY=VALUE`` strings, in order: ``overrides`` then ``more``.

    ``overrides``: a mapping ``{"train.max_steps": 20}``, ``KEY=VALUE`` strings, or one such string;
    ``more``: keyword overrides, ``__`` standing for the dots (``train__max_steps=20``), as in
    :func:`jit_core.testing.tiny_config`.

    ``api.override_texts({"optim.lr": 1e-3}, train__max_steps=20)  # ['optim.lr=0.001', 'train.max_steps=20']``
    """
    if overrides is None:
        items: list[Any] = []
    elif isinstance(overrides, str):
        items = [overrides]
    elif isinstance(overrides, Mapping):
        items = list(overrides.items())
    elif isinstance(overrides, Iterable):
        items = list(overrides)
    else:
        raise TypeError(f"overrides: a mapping {{'train.max_steps': 20}} or KEY=VALUE strings, "
                        f"not {type(overrides).__name__}")
    items += [(key.replace("__", "."), value) for key, value in more.items()]
    texts = []
    for item in items:
        if isinstance(item, tuple):
            texts.append(f"{item[0]}={_as_text(item[1])}")
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise TypeError(f"override {item!r}: use a KEY=VALUE string (e.g. 'train.max_steps=20') or a mapping")
    return texts


def resolve_config(config: str | os.PathLike | Config, overrides: Overrides = None, *, plugins: Sequence[str] = (),
                   run_dir: str | os.PathLike | None = None, **more: Any) -> Config:
    """The config ``jit train`` would resolve: a preset name, a ``.toml`` / ``.json`` file or a Config, then
    the overrides (:func:`override_texts`), then ``plugins`` enabled; the same parser and one-line
    :class:`~jit_core.config.ConfigError` as the command line. A Config passed in is not modified. The result is
    composed, not yet resolved (plugin options as given): ``jit_core.plugins.resolve_run(cfg)`` gives the frozen
    run config the trainer resolves at start-up.

    ``cfg = api.resolve_config("tiny", {"train.max_steps": 20}, plugins=["vco"])``
    """
    from jit_core.plugins.presets import build_config
    texts = override_texts(overrides, **more)
    if isinstance(config, Config):      # every key of it, as KEY=VALUE before the overrides
        keys = flatten(config, without=("run_dir",))
        return build_config(None, None, plugins, [f"{k}={_as_text(v)}" for k, v in keys.items()] + texts,
                            run_dir or config.run_dir)
    if isinstance(config, os.PathLike) or str(config).endswith((".toml", ".json")):
        return build_config(None, os.fspath(config), plugins, texts, run_dir)
    if isinstance(config, str):
        return build_config(config, None, plugins, texts, run_dir)
    raise TypeError(f"config: a preset name ('tiny'), a .toml/.json file or a Config, not {type(config).__name__}")


# ----------------------------------------------------------------------------------- train, evaluate, compare
def train(config: str | os.PathLike | Config, run_dir: str | os.PathLike, overrides: Overrides = None, *,
          plugins: Sequence[str] = (), allow_changes: Sequence[str] = (), progress: bool = True,
          **more: Any) -> LoadedRun:
    """Train (or resume) a run as ``jit train`` does and return it loaded (EMA1 weights, on the training device).

    ``config`` and the overrides resolve as in :func:`resolve_config`. The folder of the same run is
    resumed exactly; to continue a run with a longer schedule pass its own config:
    ``api.train(api.load_run_config(run), run, {"train.max_steps": 2000})``, with ``allow_changes`` naming the
    keys a resume may change (``jit train --allow-change``). Ctrl-C (a notebook's interrupt) finishes the
    step, writes a checkpoint and raises KeyboardInterrupt.

    ``run = api.train("tiny", "runs/a", {"train.max_steps": 20})``
    """
    from jit_core.distributed import resolve_device
    from jit_core.training import train as train_run
    cfg = resolve_config(config, overrides, plugins=plugins, run_dir=run_dir, **more)
    result = train_run(cfg, Path(run_dir), allow_changes=allow_changes, progress=progress)
    if result.stop_signal == signal.SIGINT:
        raise KeyboardInterrupt(f"interrupted at step {result.step}; checkpoint {result.checkpoint} kept "
                                f"(continue with api.train(api.load_run_config({str(run_dir)!r}), {str(run_dir)!r}))")
    if result.status != "finished":
        log.warning("%s at step %d (checkpoint %s)", result.status, result.step, result.checkpoint)
    return load_run(result.run_dir, device=resolve_device(cfg.train.device), trust_plugins=tuple(cfg.plugins))


def evaluate(run: RunRef, num_images: int | None = None, *, cfg: float | Sequence[float] | None = None,
             ema: str | Sequence[str] | None = None, steps: int | None = None, method: str | None = None,
             interval: Sequence[float] | None = None, seed: int = 0, batch_size: int | None = None,
             out: str | os.PathLike | None = None, metrics: str = "auto", save: str = "png",
             ref_stats: str | os.PathLike | None = None, ref_dir: str | os.PathLike | None = None,
             inception_weights: str | os.PathLike | None = None, bootstrap: int | None = None, resume: bool = True,
             checkpoint: str | os.PathLike | None = None, device: str = "auto", progress: bool = True,
             trust_plugins: Sequence[str] | bool = ()) -> dict:
    """Generate and evaluate a run as ``jit evaluate`` does; returns the result record (``metrics``,
    ``intervals``, provenance, ``json``: where it was written), or for several ``ema`` x ``cfg`` points the
    grid summary (``results``, ``best``). Defaults are the run's own sampler settings; a loaded run is
    evaluated with the weights and checkpoint it was loaded with (and may import the plugins it was loaded
    with). Metrics and files: docs/evaluation.md.

    ``result = api.evaluate(run, num_images=100, cfg=2.0); result["metrics"]``
    """
    from jit_core.eval.evaluate import EvalSpec, evaluate_run
    if isinstance(run, LoadedRun):
        ema = ema or run.ema
        checkpoint = checkpoint or run.checkpoint
    check_device(device)
    spec = EvalSpec(ema=ema or "ema1", cfg=cfg, num_images=num_images, steps=steps, method=method, interval=interval,
                    seed=seed, batch_size=batch_size, checkpoint=checkpoint, metrics=metrics, ref_stats=ref_stats,
                    ref_dir=ref_dir, inception_weights=inception_weights, bootstrap=bootstrap, out=out, save=save,
                    device=None if device == "auto" else device, progress=progress,
                    trust_plugins=_trusted([run], trust_plugins), resume=resume)
    return evaluate_run(run_folder(run), spec)


def _arms(runs: RunRef | Sequence[RunRef] | Mapping[str, RunRef | Sequence[RunRef]]) -> dict[str, list[RunRef]]:
    """Arm name -> runs: a mapping as given; runs alone are arms of one run, named as ``jit compare`` names
    its positional runs (folder names, made unique)."""
    from jit_core.eval.report import run_names
    if isinstance(runs, Mapping):
        return {str(name): [v] if isinstance(v, (str, os.PathLike, LoadedRun)) else list(v) for name, v in runs.items()}
    listed = [runs] if isinstance(runs, (str, os.PathLike, LoadedRun)) else list(runs)
    return {name: [run] for name, run in zip(run_names([run_folder(r) for r in listed]), listed)}


def compare(runs: RunRef | Sequence[RunRef] | Mapping[str, RunRef | Sequence[RunRef]], out: str | os.PathLike, *,
            baseline: str | None = None, title: str | None = None, paper: Mapping[str, str] | None = None,
            evaluate: bool = False, num_images: int | None = None, cfg: float | None = None,
            ema: str | None = None, eval_seed: int | None = None, num_samples: int = 20, seed: int = 0,
            sample_cfg: float | None = None, trust_plugins: Sequence[str] | bool = (), **eval_options: Any) -> dict:
    """Compare runs or arms as ``jit compare`` does and write the report to ``out`` (``index.html``,
    ``metrics.md``, ``arms.json``, loss curves, same-seed samples, config diff); returns ``arms.json``'s
    content: ``sentence`` (the verdict), ``rows`` (each arm's mean and 95 % interval), ``paths``.

    ``runs``: run folders or loaded runs (each its own arm), or ``{arm: run or [runs, one per training
    seed]}``. ``num_images`` / ``cfg`` / ``ema`` / ``eval_seed`` choose the evaluation compared (and, with
    ``evaluate=True``, evaluate runs without one); ``num_samples`` / ``seed`` / ``sample_cfg`` the sample
    sheet; ``eval_options``: the other keywords of :func:`jit_core.eval.report.compare_arms`.

    ``report = api.compare({"JiT": ["runs/j0", "runs/j1"], "V-Co": ["runs/v0", "runs/v1"]}, "reports/seeds")``
    """
    from jit_core.eval.report import compare_arms
    arms = _arms(runs)
    trust_plugins = _trusted([run for arm in arms.values() for run in arm], trust_plugins)
    folders = {name: [run_folder(r) for r in arm] for name, arm in arms.items()}
    return compare_arms(folders, Path(out), baseline=baseline, paper=dict(paper) if paper else None, title=title,
                        num_samples=num_samples, seed=seed, sample_cfg=sample_cfg, evaluate=evaluate,
                        num_images=num_images, cfg=cfg, ema=ema, eval_seed=eval_seed, trust_plugins=trust_plugins,
                        **eval_options)


# ----------------------------------------------------------------------------------- metrics and pictures
def read_metrics(run: RunRef, columns: bool = False) -> list[dict] | dict[str, list]:
    """A run's ``metrics.jsonl``: one dict per logged step (``step``, ``loss``, ``loss/<term>``, ``lr``,
    ``grad_norm``, ``img_per_s``, ``time``), or with ``columns=True`` one list per key (None where a step
    lacks it), ready for plotting. Unreadable lines are skipped, as ``jit compare`` skips them.

    ``steps, losses = (api.read_metrics(run, columns=True)[k] for k in ("step", "loss"))``
    """
    from jit_core.eval.report import read_log
    folder = run_folder(run)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a run folder (no config.json); pass the folder given to train")
    rows = read_log(folder)
    if not columns:
        return rows
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


def _read_image(path: Path) -> Image:
    from PIL import Image as PILImage
    with PILImage.open(path) as img:
        img.load()
        return img.copy()


def plot_losses(runs: RunRef | Sequence[RunRef] | Mapping[str, RunRef | Sequence[RunRef]],
                out: str | os.PathLike | None = None, x: str = "step") -> Image:
    """The loss curves ``jit compare`` draws, one panel per loss term, as a PIL image (a notebook shows it
    inline), also saved as PNG + PDF at ``out`` (a ``.png``; the PDF beside it) when given. ``runs``: runs
    (one curve each), or arm name -> one run or its seeds (one curve per arm: the mean over the seeds with a
    min-max band); a run that logged one point is a marker. ``x``: ``step`` or ``time`` (wall clock).

    ``api.plot_losses({"JiT": ["runs/a-s0", "runs/a-s1"], "V-Co": "runs/b"}, out="losses.png")``
    """
    import tempfile

    from jit_core.eval.loss_curves import plot_run_losses
    if x not in ("step", "time"):
        raise ValueError(f"x={x!r}: use 'step' or 'time'")
    arms = {name: [run_folder(r) for r in arm] for name, arm in _arms(runs).items()}
    if out is not None:
        png, _pdf = plot_run_losses(arms, Path(out), x)
        return _read_image(png)
    with tempfile.TemporaryDirectory() as tmp:
        png, _pdf = plot_run_losses(arms, Path(tmp) / "loss_curves.png", x)
        return _read_image(png)


def sample_grid(run: RunRef, labels: Sequence[int] | None = None, *, num_per_class: int = 8, cfg: float | None = None,
                steps: int | None = None, method: str | None = None, seed: int = 0, ema: str | None = None,
                scale: int = 2, out: str | os.PathLike | None = None, device: str = "auto",
                trust_plugins: Sequence[str] | bool = ()) -> Image:
    """Samples of a run as ``jit sample``'s grid: ``labels`` (default ``num_per_class`` of each of the first
    10 classes, one class per row), fixed seeds, the run's sampler unless ``cfg`` / ``steps`` / ``method``
    say otherwise; a PIL image, also saved as PNG at ``out`` when given. A folder is loaded with ``ema``
    weights (default EMA1) on ``device``; a loaded run is sampled with its own weights.

    ``api.sample_grid(run, [0, 0, 1, 1], cfg=2.0, seed=1)``
    """
    import torch

    from jit_core.distributed import resolve_device
    from jit_core.images import make_grid, save_grid
    if isinstance(run, LoadedRun):
        if ema is not None and ema != run.ema:
            raise ValueError(f"ema={ema!r}, but this run was loaded with {run.ema!r} weights: pass its folder, "
                             f"or api.load_run(folder, ema={ema!r})")
        loaded = run
    else:
        check_device(device)
        folder = run if isinstance(run, str) else run_folder(run)      # load_run takes the names it knows
        loaded = load_run(folder, ema=ema or "ema1", device=resolve_device(device), trust_plugins=trust_plugins)
    num_classes = loaded.model.cfg.num_classes
    if labels is None:
        wanted = torch.arange(min(10, num_classes)).repeat_interleave(num_per_class)
        nrow = num_per_class
    else:
        wanted, nrow = torch.as_tensor(list(labels), dtype=torch.int64), None
        bad = [int(v) for v in wanted if not 0 <= v < num_classes]
        if bad:
            raise ValueError(f"labels: {bad[0]} is not a class of this run (0 .. {num_classes - 1}; "
                             f"{num_classes} is the null class)")
        if not len(wanted):
            raise ValueError("labels: empty; give class labels (e.g. [0, 1, 2]) or None for every class")
    images = generate(loaded, wanted, cfg=cfg, steps=steps, method=method, seed=seed)
    if out is not None:
        save_grid(images, Path(out), nrow=nrow, scale=scale)
    return make_grid(images, nrow=nrow, scale=scale)
