"""Test helpers for plugin authors: a plugin's test is a few lines.

Plain functions (no pytest needed)::

    from jit_core.testing import one_step, train_tiny, tiny_config, RecordingPlugin

    total, losses = one_step(plugins=["repa"])                     # one training objective, tiny model
    result, metrics = train_tiny(tmp_path, plugins=["repa"], steps=3)
    assert "loss/repa" in metrics[-1]

- :func:`tiny_config`: the core's ``test`` preset (sklearn digits, JiT-T/4, exact attention, fp32,
  CPU) with a batch of 8, ``steps`` optimizer steps, every step logged, a 2-step sampler.
- :func:`train_tiny`: a real :func:`jit_core.train.train` run in a folder under ``tmp_path``;
  returns the :class:`~jit_core.train.TrainResult` and the ``metrics.jsonl`` records.
- :func:`tiny_setup` / :func:`one_step`: a real :class:`~jit_core.train.Trainer` (same plugin
  wiring as training: streams, trainable modules, captured blocks, batch sampler) and one call of
  its objective (:func:`jit_core.diffusion.training_losses`) on its first batch.
- :class:`RecordingPlugin`: implements every hook, records each call (name and keyword
  arguments) and returns nothing unless told to (``returns=`` values, ``handlers=`` functions).
- :func:`make_plugin_distribution`: a throwaway installed plugin (module + ``*.dist-info`` with the
  ``jit_core.plugins`` entry point) in a folder; put the folder on ``sys.path`` to "install" it.
- :func:`hook_reference_markdown`: the hook reference of ``docs/plugins.md``, rendered from the
  hookspec docstrings (``python -m jit_core.testing --update-docs docs/plugins.md`` rewrites it).

Pytest fixtures (``pytest_plugins = ["jit_core.testing"]`` in a top-level conftest or test module):
``jit_recorder``, ``jit_train``, ``jit_one_step``, ``jit_plugin_dist``, ``jit_cli``, ``jit_no_autoload``.

Heavy modules (torch, the trainer) are imported inside the functions, so loading this module as a
pytest plugin costs nothing. PYTEST_DONT_REWRITE: it has no asserts, and test modules often import
it before pytest registers it as a plugin.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hookspecs
from .hookspecs import hookimpl

__all__ = [
    "HOOKS_END",
    "HOOKS_START",
    "HookCall",
    "RecordingPlugin",
    "TinySetup",
    "hook_reference_markdown",
    "make_plugin_distribution",
    "one_step",
    "read_metrics",
    "run_cli",
    "tiny_config",
    "tiny_setup",
    "train_tiny",
    "update_hook_reference",
]

HOOKS_START = "<!-- hooks:start -->"
HOOKS_END = "<!-- hooks:end -->"


# ----------------------------------------------------------------------------------- configs and runs
def tiny_config(plugins: Iterable[str] = (), steps: int = 3, **overrides: Any):
    """The smallest real run: the ``test`` preset (digits, JiT-T/4, exact attention, fp32, CPU).

    Batch 8, ``steps`` optimizer steps, every step logged, one checkpoint at the end, and a 2-step
    Heun sampler (one guided evaluation) for the sample grid written at the end of training.
    ``overrides`` are config keys, dotted or with ``__`` for the dots (``optim__lr=1e-3``,
    ``**{"repa.coef": 0.1}``); plugin options are checked when the run starts, as in ``jit train``.
    """
    from .config import get_preset, set_key
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
    from .train import train
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
    """A real :class:`~jit_core.train.Trainer` on the tiny config and its first batch of ``batch_size``.

    Plugins are loaded, their options checked, the model built with their streams, their trainable
    modules, captured blocks and batch sampler set up exactly as in training. The trainer writes
    its ``config.json`` into ``run_dir`` (default: a temporary folder removed with the object).
    Seeds the global RNGs (``train.seed = seed``), as training does.
    """
    from .data import to_model_range
    from .train import Trainer
    cfg = config if config is not None else tiny_config(plugins, 1, **overrides)
    cfg.optim.batch_size = batch_size
    cfg.train.seed = seed
    temporary = run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="jit-tiny-")) if temporary else _fresh_dir(Path(run_dir), "tiny")
    trainer = Trainer(cfg, run_dir, extra_plugins=list(extra_plugins), progress=False, handle_signals=())
    images_u8, labels = next(iter(trainer.batches.iterate(0)))
    setup = TinySetup(trainer, to_model_range(images_u8.to(trainer.device)), labels.to(trainer.device))
    if temporary:
        setup._cleanup = weakref.finalize(setup, shutil.rmtree, str(run_dir), True)
    return setup


def one_step(plugins: Iterable[str] = (), extra_plugins: Sequence[Any] = (), **kwargs: Any):
    """``(total, losses)``: the training objective once on a tiny model and batch (see :func:`tiny_setup`)."""
    return tiny_setup(plugins, extra_plugins, **kwargs).step()


# ----------------------------------------------------------------------------------- recording plugin
@dataclass
class HookCall:
    """One recorded hook call: the hook's name and the keyword arguments it was called with."""

    name: str
    kwargs: dict

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.kwargs))


class RecordingPlugin:
    """A plugin that implements every hook and records every call.

    By default each hook returns None (nothing added, firstresult hooks fall through to the next
    provider), so registering it changes nothing. ``returns={"jit_capture_blocks": [1]}`` makes a
    hook return a value; ``handlers={"jit_loss_terms": fn}`` calls ``fn(**kwargs)`` and returns its
    result. The implementations are ``tryfirst``, so the recorder sees every call of a firstresult
    hook and its non-None results win over other plugins'. ``name`` is the name it is registered
    under (``Plugins(extra=[...])`` uses ``__name__``), which is also its options namespace.

    ``jit_options`` is called directly by the plugin manager when it registers a plugin (and when
    it collects option schemas), so it is recorded without keyword arguments.
    """

    def __init__(self, name: str = "recorder", returns: Mapping[str, Any] | None = None,
                 handlers: Mapping[str, Callable[..., Any]] | None = None):
        self.__name__ = name
        self.returns = dict(returns or {})
        self.handlers = dict(handlers or {})
        unknown = sorted((set(self.returns) | set(self.handlers)) - set(hook_names()))
        if unknown:
            raise ValueError(f"RecordingPlugin: unknown hooks {unknown}; hooks: {', '.join(hook_names())}")
        self.calls: list[HookCall] = []

    def __repr__(self) -> str:
        return f"RecordingPlugin({self.__name__!r}, {len(self.calls)} calls)"

    # -- queries
    def names(self) -> list[str]:
        """Hook names in call order."""
        return [c.name for c in self.calls]

    def calls_of(self, name: str) -> list[HookCall]:
        return [c for c in self.calls if c.name == name]

    def count(self, name: str) -> int:
        return len(self.calls_of(name))

    def called(self, name: str) -> bool:
        return self.count(name) > 0

    def clear(self) -> None:
        self.calls.clear()

    # -- recording
    def _call(self, name: str, **kwargs: Any) -> Any:
        self.calls.append(HookCall(name, kwargs))
        if name in self.handlers:
            return self.handlers[name](**kwargs)
        return self.returns.get(name)

    # -- every hook of jit_core.hookspecs, with its full signature
    @hookimpl(tryfirst=True)
    def jit_options(self):
        return self._call("jit_options")

    @hookimpl(tryfirst=True)
    def jit_presets(self):
        return self._call("jit_presets")

    @hookimpl(tryfirst=True)
    def jit_streams(self, config, model_config):
        return self._call("jit_streams", config=config, model_config=model_config)

    @hookimpl(tryfirst=True)
    def jit_normalize(self, stream, target, config):
        return self._call("jit_normalize", stream=stream, target=target, config=config)

    @hookimpl(tryfirst=True)
    def jit_unconditional(self, labels, drop, streams, config):
        return self._call("jit_unconditional", labels=labels, drop=drop, streams=streams, config=config)

    @hookimpl(tryfirst=True)
    def jit_capture_blocks(self, config):
        return self._call("jit_capture_blocks", config=config)

    @hookimpl(tryfirst=True)
    def jit_trainable_modules(self, config, model):
        return self._call("jit_trainable_modules", config=config, model=model)

    @hookimpl(tryfirst=True)
    def jit_loss_terms(self, step):
        return self._call("jit_loss_terms", step=step)

    @hookimpl(tryfirst=True)
    def jit_batch_sampler(self, dataset, config, rank, world_size, seed):
        return self._call("jit_batch_sampler", dataset=dataset, config=config, rank=rank, world_size=world_size,
                          seed=seed)

    @hookimpl(tryfirst=True)
    def jit_guidance_scale(self, stream, scale, config):
        return self._call("jit_guidance_scale", stream=stream, scale=scale, config=config)

    @hookimpl(tryfirst=True)
    def jit_add_commands(self, cli):
        return self._call("jit_add_commands", cli=cli)


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

    from .cli import _add_optional_commands, cli
    _add_optional_commands()
    return CliRunner().invoke(cli, list(args), env=dict(env) if env else None, catch_exceptions=True)


# ----------------------------------------------------------------------------------- hook reference
def hook_names() -> list[str]:
    """The hooks of :mod:`jit_core.hookspecs`, in the order they are defined (= documented)."""
    return [name for name, fn in vars(hookspecs).items()
            if name.startswith("jit_") and callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")]


def _rst_to_markdown(text: str) -> str:
    """The small subset of reST the hookspec docstrings use: ``literal`` and ``Example::`` blocks."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            out.append(head + ":" if head and not head.endswith(":") else head)
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            indent = None
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > 0):
                if lines[i].strip():
                    ind = len(lines[i]) - len(lines[i].lstrip())
                    indent = ind if indent is None else min(indent, ind)
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```python"] + [b[indent or 0:] for b in block] + ["```", ""]
            continue
        out.append(re.sub(r"``([^`]+)``", r"`\1`", line))
        i += 1
    return "\n".join(out).strip()


def hook_reference_markdown() -> str:
    """The hook reference (Markdown) rendered from the hookspec docstrings, for ``docs/plugins.md``."""
    rows, sections = [], []
    for name in hook_names():
        fn = getattr(hookspecs, name)
        opts = getattr(fn, f"{hookspecs.PROJECT}_spec")
        sig = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        doc = inspect.cleandoc(fn.__doc__ or "")
        first = re.sub(r"\*\*[^*]+\*\*\s*", "", doc.split("\n\n")[0].replace("\n", " "))
        first = re.sub(r"``([^`]+)``", r"`\1`", first)
        kind = "firstresult" if opts.get("firstresult") else "every plugin"
        rows.append(f"| [`{name}`](#{name}) | {kind} | {first} |")
        note = ("the first non-None result wins; if every plugin returns None the core's default applies"
                if opts.get("firstresult") else "each plugin's implementation is called and the results are combined")
        sections.append(f"### {name}\n\n`{sig}` — *{kind}*: {note}.\n\n{_rst_to_markdown(doc)}\n")
    header = ("<!-- generated from jit_core/hookspecs.py by jit_core.testing.hook_reference_markdown(); "
              "regenerate with: python -m jit_core.testing --update-docs docs/plugins.md -->\n\n"
              "| hook | called | what it does |\n| --- | --- | --- |\n")
    return header + "\n".join(rows) + "\n\n" + "\n".join(sections).rstrip() + "\n"


def update_hook_reference(path: str | os.PathLike) -> bool:
    """Rewrite the part of ``path`` between the hook markers; True if it changed."""
    path = Path(path)
    text = path.read_text()
    if HOOKS_START not in text or HOOKS_END not in text:
        raise ValueError(f"{path} has no {HOOKS_START} ... {HOOKS_END} markers")
    head, rest = text.split(HOOKS_START, 1)
    _, tail = rest.split(HOOKS_END, 1)
    new = f"{head}{HOOKS_START}\n{hook_reference_markdown()}{HOOKS_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def documented_hook_reference(path: str | os.PathLike) -> str:
    """The part of ``path`` between the hook markers (to compare with :func:`hook_reference_markdown`)."""
    text = Path(path).read_text()
    return text.split(HOOKS_START, 1)[1].split(HOOKS_END, 1)[0].strip("\n") + "\n"


# ----------------------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # the plain functions work without pytest
    pytest = None

if pytest is not None:
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
        from .plugins import DISABLE_ENV
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
        from .cli import cli
        from .config import PRESETS
        commands, presets = dict(cli.commands), dict(PRESETS)
        yield run_cli
        cli.commands.clear()
        cli.commands.update(commands)
        PRESETS.clear()
        PRESETS.update(presets)


# ----------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jit_core.testing [--update-docs FILE | --check-docs FILE]``: print, rewrite or
    check the generated hook reference."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m jit_core.testing", description=main.__doc__)
    parser.add_argument("--update-docs", metavar="FILE", help="rewrite the hook reference between the markers")
    parser.add_argument("--check-docs", metavar="FILE", help="exit 1 if the hook reference is out of date")
    args = parser.parse_args(argv)
    if args.update_docs:
        print(f"{args.update_docs}: {'updated' if update_hook_reference(args.update_docs) else 'up to date'}")
    elif args.check_docs:
        ok = documented_hook_reference(args.check_docs) == hook_reference_markdown()
        print(f"{args.check_docs}: {'up to date' if ok else 'OUT OF DATE (run with --update-docs)'}")
        return 0 if ok else 1
    else:
        sys.stdout.write(hook_reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
