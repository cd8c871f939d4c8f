"""Test helpers for plugin authors: a plugin's test is a few lines.

Plain functions (no pytest needed)::

    from jit_core.testing import one_step, train_tiny, tiny_config, RecordingPlugin

    total, losses = one_step(plugins=["repa"])                     # one training objective, tiny model
    result, metrics = train_tiny(tmp_path, plugins=["repa"], steps=3)
    assert "loss/repa" in metrics[-1]

- :func:`tiny_config`: the core's ``test`` preset (sklearn digits, JiT-T/4, exact attention, fp32,
  CPU) with a batch of 8, ``steps`` optimizer steps, every step logged, a 2-step sampler.
- :func:`train_tiny`: a real :func:`jit_core.training.train` run in a folder under ``tmp_path``;
  returns the :class:`~jit_core.training.TrainResult` and the ``metrics.jsonl`` records.
- :func:`tiny_setup` / :func:`one_step`: a real :class:`~jit_core.training.Trainer` (same plugin
  wiring as training: streams, trainable modules, captured blocks, batch sampler) and one call of
  its objective (:func:`jit_core.diffusion.training_losses`) on its first batch.
- :func:`tiny_model` / :func:`nontrivial`: the tiny network with the plugins' streams and
  *non-trivial* weights. A fresh JiT is adaLN-Zero (block gates and heads start at zero), so its
  output ignores its inputs and "does X depend on Y" tests pass vacuously; ``nontrivial(model)``
  perturbs every trainable tensor (seeded) so that every path is live.
- :class:`RecordingPlugin` (from :mod:`jit_core.plugins.recording`): implements every hook, records each call
  (name and keyword arguments) and returns nothing unless told to (``returns=`` values, ``handlers=``
  functions).
- :func:`check_resumes_bit_identically` / :func:`check_off_equals_baseline`: the two guarantees every plugin
  must keep, each one line in a test (they raise ``AssertionError`` naming the first difference)::

      check_resumes_bit_identically(tmp_path, plugins=["myplug"])                 # kill at step 2, resume to 4
      check_off_equals_baseline(tmp_path, plugins=["myplug"], off={"myplug.coef": 0})
- :func:`make_plugin_distribution`: a throwaway installed plugin (module + ``*.dist-info`` with the
  ``jit_core.plugins`` entry point) in a folder; put the folder on ``sys.path`` to "install" it.
- :func:`run_cli`: ``jit ARGS`` in-process, plugin commands included.
- :func:`hook_reference_markdown` (from :mod:`jit_core.plugins.hookref`): the hook reference of
  ``docs/plugins.md``, rendered from the hookspec docstrings (``python -m jit_core.plugins.hookref
  --update-docs docs/plugins.md`` rewrites it).

Pytest fixtures (``pytest_plugins = ["jit_core.testing"]`` in a top-level conftest or test module):
``jit_recorder``, ``jit_train``, ``jit_one_step``, ``jit_plugin_dist``, ``jit_cli``, ``jit_no_autoload``.

This module holds the tiny-run helpers, the installed-plugin helpers and the pytest fixtures; the
recording plugin (:mod:`jit_core.plugins.recording`) and the hook reference renderer (:mod:`jit_core.plugins.hookref`)
live in their own modules and are re-exported here (``__all__``).

Heavy modules (torch, the trainer) are imported inside the functions, so loading this module as a
pytest plugin costs nothing. PYTEST_DONT_REWRITE: it has no asserts, and test modules often import
it before pytest registers it as a plugin.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jit_core.plugins.hookref import HOOKS_END, HOOKS_START, hook_reference_markdown, update_hook_reference
from jit_core.plugins.recording import HookCall, RecordingPlugin

__all__ = [
    "HOOKS_END",
    "HOOKS_START",
    "HookCall",
    "RecordingPlugin",
    "TinySetup",
    "check_off_equals_baseline",
    "check_resumes_bit_identically",
    "hook_reference_markdown",
    "make_plugin_distribution",
    "nontrivial",
    "one_step",
    "read_metrics",
    "run_cli",
    "tiny_config",
    "tiny_model",
    "tiny_setup",
    "train_tiny",
    "update_hook_reference",
]


# ----------------------------------------------------------------------------------- configs and runs
def tiny_config(plugins: Iterable[str] = (), steps: int = 3, **overrides: Any):
    """The smallest real run: the ``test`` preset (digits, JiT-T/4, exact attention, fp32, CPU).

    Batch 8, ``steps`` optimizer steps, every step logged, one checkpoint at the end, and a 2-step
    Heun sampler (one guided evaluation) for the sample grid written at the end of training.
    ``overrides`` are config keys, dotted or with ``__`` for the dots (``optim__lr=1e-3``,
    ``**{"repa.coef": 0.1}``); plugin options are checked when the run starts, as in ``jit train``.
    """
    from jit_core.config import get_preset, set_key
    cfg = get_preset("test")
    cfg.plugins = list(plugins)
    cfg.optim.batch_size = 8
    cfg.train.max_steps = steps
    cfg.train.log_every = 1
    cfg.train.ckpt_every = max(int(steps), 1)
    cfg.sample.steps = 2
    cfg.sample.batch_size = 40       # the end-of-training grid (40 images) in one sampler call
    for key, value in overrides.items():
        set_key(cfg, key.replace("__", "."), value)
    return cfg


def _fresh_dir(parent: Path, name: str) -> Path:
    path, i = parent / name, 1
    while path.exists():
        path, i = parent / f"{name}-{i}", i + 1
    return path


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (one dict per logged step)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_tiny(tmp_path: str | os.PathLike, plugins: Iterable[str] = (), extra_plugins: Sequence[Any] = (),
               steps: int = 3, config=None, run_name: str = "run", **overrides: Any):
    """Train a tiny real run in a new folder under ``tmp_path``; returns ``(TrainResult, metrics)``.

    ``plugins``: names (entry points) or module paths to enable; ``extra_plugins``: plugin objects
    or modules registered directly (as ``Trainer(extra_plugins=...)``); ``config``: use this config
    instead of :func:`tiny_config` (``plugins``, ``steps`` and ``overrides`` then do not apply).
    """
    from jit_core.training import train
    cfg = config if config is not None else tiny_config(plugins, steps, **overrides)
    run_dir = _fresh_dir(Path(tmp_path), run_name)
    result = train(cfg, run_dir, extra_plugins=list(extra_plugins), progress=False, handle_signals=())
    return result, read_metrics(run_dir)


@dataclass
class TinySetup:
    """A tiny trainer and its first batch; :meth:`step` evaluates the training objective once."""

    trainer: Any
    images: Any                 # (B, C, H, W) in [-1, 1]
    labels: Any                 # (B,)
    _cleanup: Any = field(default=None, repr=False)

    @property
    def config(self):
        return self.trainer.config

    @property
    def plugins(self):
        return self.trainer.plugins

    @property
    def model(self):
        return self.trainer.model

    @property
    def aux(self):
        """The plugins' trainable modules (``jit_trainable_modules``), an ``nn.ModuleDict``."""
        return self.trainer.aux

    @property
    def capture(self) -> list[int]:
        return self.trainer.capture

    def step(self):
        """``(total, losses)`` of :func:`jit_core.diffusion.training_losses` with gradients (no optimizer step)."""
        self.trainer.model.train()
        return self.trainer.objective(self.images, self.labels)


def tiny_setup(plugins: Iterable[str] = (), extra_plugins: Sequence[Any] = (), config=None, batch_size: int = 4,
               seed: int = 0, run_dir: str | os.PathLike | None = None, **overrides: Any) -> TinySetup:
    """A real :class:`~jit_core.training.Trainer` on the tiny config and its first batch of ``batch_size``.

    Plugins are loaded, their options checked, the model built with their streams, their trainable
    modules, captured blocks and batch sampler set up exactly as in training. The trainer writes
    its ``config.json`` into ``run_dir`` (default: a temporary folder removed with the object).
    Seeds the global RNGs (``train.seed = seed``), as training does.
    """
    from jit_core.config import evolve
    from jit_core.data import to_model_range
    from jit_core.training import Trainer
    cfg = config if config is not None else tiny_config(plugins, 1, **overrides)
    cfg = evolve(cfg, {"optim.batch_size": batch_size, "train.seed": seed})   # the caller's config stays as it was
    temporary = run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="jit-tiny-")) if run_dir is None else _fresh_dir(Path(run_dir), "tiny")
    trainer = Trainer(cfg, run_dir, extra_plugins=list(extra_plugins), progress=False, handle_signals=())
    images_u8, labels = next(iter(trainer.batches.iterate(0)))
    setup = TinySetup(trainer, to_model_range(images_u8.to(trainer.device)), labels.to(trainer.device))
    if temporary:
        setup._cleanup = weakref.finalize(setup, shutil.rmtree, str(run_dir), True)
    return setup


def one_step(plugins: Iterable[str] = (), extra_plugins: Sequence[Any] = (), **kwargs: Any):
    """``(total, losses)``: the training objective once on a tiny model and batch (see :func:`tiny_setup`)."""
    return tiny_setup(plugins, extra_plugins, **kwargs).step()



def _final_weights(result) -> dict:
    from safetensors.torch import load_file
    return {f"{name}.{key}": value for name in ("model", "ema1", "ema2", "aux")
            if (result.checkpoint / f"{name}.safetensors").is_file()
            for key, value in load_file(str(result.checkpoint / f"{name}.safetensors")).items()}


def _compare_runs(what: str, a, metrics_a: list, b, metrics_b: list, keys=None) -> None:
    """AssertionError naming the first logged value or weight that differs (bit for bit) between two runs."""
    import torch
    if len(metrics_a) != len(metrics_b):
        raise AssertionError(f"{what}: {len(metrics_a)} logged steps vs {len(metrics_b)}")
    for ma, mb in zip(metrics_a, metrics_b):
        for key in keys or sorted(k for k in ma if k.startswith("loss") or k == "grad_norm"):
            if ma.get(key) != mb.get(key):
                raise AssertionError(f"{what}: {key} at step {ma['step']} is {ma.get(key)!r} vs {mb.get(key)!r}")
    wa, wb = _final_weights(a), _final_weights(b)
    shared = [k for k in wa if k.startswith(("model.", "ema1.", "ema2.")) or k in wb]
    for key in shared:
        if key not in wb or not torch.equal(wa[key], wb[key]):
            raise AssertionError(f"{what}: final weight {key} differs")


def check_resumes_bit_identically(tmp_path: str | os.PathLike, plugins: Iterable[str] = (),
                                  extra_plugins: Sequence[Any] = (), steps: int = 4, stop_at: int | None = None,
                                  **overrides: Any) -> None:
    """Raise AssertionError unless a run stopped after ``stop_at`` steps (default ``steps // 2``, checkpointed) and
    resumed by a new :class:`~jit_core.training.Trainer` logs the same losses and ends with the same weights
    (model, EMAs, trainable modules), bit for bit, as an uninterrupted run of ``steps``.

    Catches a plugin that draws from the global RNG in a step, builds something lazily after the resumed RNG
    state was restored, or keeps state across runs in module globals. ``extra_plugins`` objects are shared by
    the three trainers (a plugin factory makes a fresh run object for each, as in separate processes).
    """
    from jit_core.training import train
    stop_at = steps // 2 if stop_at is None else stop_at
    full_dir, cut_dir = _fresh_dir(Path(tmp_path), "uninterrupted"), _fresh_dir(Path(tmp_path), "resumed")
    full = train(tiny_config(plugins, steps, **overrides), full_dir, extra_plugins=list(extra_plugins),
                 progress=False, handle_signals=())
    first = tiny_config(plugins, steps, **overrides)
    first.train.max_steps = stop_at
    train(first, cut_dir, extra_plugins=list(extra_plugins), progress=False, handle_signals=())
    resumed = train(tiny_config(plugins, steps, **overrides), cut_dir, extra_plugins=list(extra_plugins),
                    progress=False, handle_signals=())
    if resumed.step != full.step:
        raise AssertionError(f"resume: the resumed run ended at step {resumed.step}, the uninterrupted at {full.step}")
    _compare_runs(f"resume after step {stop_at}", full, read_metrics(full_dir), resumed, read_metrics(cut_dir))


def check_off_equals_baseline(tmp_path: str | os.PathLike, plugins: Iterable[str] = (),
                              off: Mapping[str, Any] | None = None, extra_plugins: Sequence[Any] = (), steps: int = 3,
                              **overrides: Any) -> None:
    """Raise AssertionError unless a run with ``plugins`` enabled and switched off by ``off`` (option overrides,
    e.g. ``{"myplug.coef": 0}``; None: enabled as is) trains the baseline, bit for bit: the same pixel and total
    losses, gradient norms and final network weights as the same run without any plugin."""
    from jit_core.training import train
    base_dir, on_dir = _fresh_dir(Path(tmp_path), "baseline"), _fresh_dir(Path(tmp_path), "plugin-off")
    base = train(tiny_config((), steps, **overrides), base_dir, progress=False, handle_signals=())
    with_plugin = train(tiny_config(plugins, steps, **{**overrides, **dict(off or {})}), on_dir,
                        extra_plugins=list(extra_plugins), progress=False, handle_signals=())
    _compare_runs("plugin switched off vs baseline", base, read_metrics(base_dir), with_plugin, read_metrics(on_dir),
                  keys=("loss", "loss/pixel", "grad_norm"))


def nontrivial(model, scale: float = 0.05, seed: int = 0):
    """Add N(0, ``scale``^2) noise (generator seeded by ``seed``) to every trainable tensor of ``model``, in place.

    Returns the model. Use it before testing that an output depends (or does not depend) on an input:
    a freshly initialised JiT is adaLN-Zero and ignores its inputs.
    """
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g).to(p))
    return model


@dataclass
class TinyModel:
    """:func:`tiny_model`'s result: the network, its plugins (``plugins.hook`` for ``sample`` /
    ``training_losses``) and the checked config."""

    model: Any
    plugins: Any
    config: Any


def tiny_model(plugins: Iterable[str] = (), extra_plugins: Sequence[Any] = (), config=None, seed: int = 0,
               scale: float | None = 0.05, attention: str = "exact", **overrides: Any) -> TinyModel:
    """The tiny network (JiT-T/4 on 32 px, 1 channel, 10 classes) with the plugins' streams, in eval mode.

    Options are checked as at start-up; ``scale`` (default 0.05) makes the weights non-trivial with
    :func:`nontrivial` (``None``: the fresh adaLN-Zero init). No data is read and nothing is written.
    """
    from jit_core.plugins import resolve_run
    from jit_core.runs.network import build_network
    cfg = config if config is not None else tiny_config(plugins, 1, **overrides)
    cfg, pl = resolve_run(cfg, extra_plugins)       # as at start-up: the frozen config, its model config inside
    mc = cfg.model_config
    import torch
    torch.manual_seed(seed)
    model = build_network(cfg, pl, mc, attention=attention).eval()
    return TinyModel(nontrivial(model, scale, seed) if scale else model, pl, cfg)


# ----------------------------------------------------------------------------------- installed plugins
def make_plugin_distribution(root: str | os.PathLike, source: str, *, entry_name: str = "myplug",
                             module: str = "jit_myplug", dist_name: str = "jit-myplug", version: str = "0.1.0",
                             attr: str | None = None, group: str = "jit_core.plugins") -> Path:
    """Write a throwaway installed plugin into ``root``: ``<module>.py`` with ``source`` and
    ``<dist>-<version>.dist-info/`` (``METADATA``, ``entry_points.txt`` declaring
    ``<entry_name> = <module>[:<attr>]`` in ``group``). Returns ``root``.

    Put ``root`` on ``sys.path`` (``monkeypatch.syspath_prepend(root)``) and
    ``importlib.metadata.entry_points`` finds it like a ``pip install``-ed plugin. A dotted
    ``module`` (``pkg.plugin``) is written as a package.
    """
    import textwrap
    root = Path(root)
    parts = module.split(".")
    folder = root.joinpath(*parts[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, len(parts)):
        init = root.joinpath(*parts[:i], "__init__.py")
        if not init.exists():
            init.write_text("")
    (folder / f"{parts[-1]}.py").write_text(textwrap.dedent(source))
    info = root / f"{re.sub(r'[-_.]+', '_', dist_name)}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    target = f"{module}:{attr}" if attr else module
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry_name} = {target}\n")
    import importlib
    importlib.invalidate_caches()
    return root


def run_cli(*args: str, env: Mapping[str, str] | None = None):
    """Run ``jit ARGS`` in-process (click's ``CliRunner``, plugin commands included); returns the click Result.

    Plugin commands are added to the global ``jit`` group, as ``jit`` itself does; the
    ``jit_cli`` fixture restores the group and the preset registry afterwards.
    """
    from click.testing import CliRunner

    from jit_core.cli import add_all_commands, cli
    add_all_commands()
    return CliRunner().invoke(cli, list(args), env=dict(env) if env else None, catch_exceptions=True)



# ----------------------------------------------------------------------------------- pytest fixtures
try:
    import pytest
    _HAVE_PYTEST = True
except ImportError:  # the plain functions work without pytest
    _HAVE_PYTEST = False

if _HAVE_PYTEST:
    @pytest.fixture
    def jit_recorder() -> RecordingPlugin:
        """A fresh :class:`RecordingPlugin` named ``recorder``; pass it in ``extra_plugins``."""
        return RecordingPlugin()

    @pytest.fixture
    def jit_train(tmp_path):
        """``jit_train(plugins=..., extra_plugins=..., steps=3, **overrides) -> (TrainResult, metrics)``."""
        def run(*args, **kwargs):
            return train_tiny(tmp_path, *args, **kwargs)
        return run

    @pytest.fixture
    def jit_one_step(tmp_path):
        """``jit_one_step(plugins=..., extra_plugins=..., **kwargs) -> (total, losses)``."""
        def run(*args, **kwargs):
            kwargs.setdefault("run_dir", tmp_path)
            return one_step(*args, **kwargs)
        return run

    @pytest.fixture
    def jit_no_autoload(monkeypatch):
        """``JIT_DISABLE_PLUGIN_AUTOLOAD=1`` for the test: entry-point plugins are invisible."""
        from jit_core.plugins import DISABLE_ENV
        monkeypatch.setenv(DISABLE_ENV, "1")

    @pytest.fixture
    def jit_plugin_dist(tmp_path, monkeypatch):
        """``jit_plugin_dist(source, entry_name="myplug", module="jit_myplug", ...) -> folder``: a throwaway
        plugin distribution on ``sys.path`` for this test (see :func:`make_plugin_distribution`)."""
        modules: list[str] = []

        def make(source: str, **kwargs):
            root = make_plugin_distribution(_fresh_dir(tmp_path, "site"), source, **kwargs)
            monkeypatch.syspath_prepend(str(root))
            modules.append(kwargs.get("module", "jit_myplug"))
            return root

        yield make
        for mod in modules:
            for key in [k for k in sys.modules if k == mod or k.startswith(mod + ".") or mod.startswith(k + ".")]:
                if getattr(sys.modules[key], "__file__", None) and str(tmp_path) in str(sys.modules[key].__file__):
                    del sys.modules[key]

    @pytest.fixture
    def jit_cli():
        """``jit_cli(*args, env=None) -> click Result`` (see :func:`run_cli`); the ``jit`` group's
        commands and the preset registry are restored afterwards."""
        from jit_core.cli import cli
        from jit_core.config import PRESETS
        commands, presets = dict(cli.commands), dict(PRESETS)
        yield run_cli
        cli.commands.clear()
        cli.commands.update(commands)
        PRESETS.clear()
        PRESETS.update(presets)
