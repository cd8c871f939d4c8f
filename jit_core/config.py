"""Typed run configuration: dataclasses, named presets, config files and dotted overrides.

``Config`` is what a run is: ``jit train --preset jit-b16 optim.blr=1e-4 vco.drift_coef=5``.
Plugin options live under their plugin's namespace (``vco.*``) and are typed by the plugin.
Unknown keys and ill-typed values fail with a message naming the key and the nearest valid one.

Allowed values are declared once, next to each field, with :func:`option` (``choices=``, ``ge=``,
``gt=``, ``le=``, ``lt=``) -- the core's fields below and plugins' option dataclasses alike.
:func:`check_config` enforces them (plus a few checks across fields); the trainer runs it at start-up
and ``jit train --dry-run`` runs the same start-up checks, before the run folder is touched.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

try:                 # Python >= 3.11
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


DATASET_NAMES = ("imagenet", "folder", "fashion_mnist", "digits")
ATTENTION_PATHS = ("exact", "fast")
SAMPLE_METHODS = ("heun", "euler")
_RANGES = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def option(default: Any, *, choices: Optional[typing.Sequence] = None, ge=None, gt=None, le=None, lt=None):
    """A dataclass field with its allowed values declared next to it (checked by :func:`check_fields`).

    ``choices``: the allowed values; ``ge``/``gt``/``le``/``lt``: bounds. A tuple or list value is
    checked element by element; None (an unset ``Optional``) is always allowed. Example:
    ``log_every: int = option(100, gt=0)``.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"choices": tuple(choices) if choices is not None else None, "bounds": bounds}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def allowed(f: dataclasses.Field) -> str:
    """The allowed values of a field declared with :func:`option`, as text ("" if unconstrained)."""
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds") or {}
    if choices is not None:
        return "one of " + ", ".join(str(c) for c in choices)
    return " and ".join(f"{_RANGES[k][0]} {b}" for k, b in bounds.items())


def check_fields(obj: Any, prefix: str) -> None:
    """Check every :func:`option` field of the dataclass ``obj`` (key ``prefix.name``); ConfigError naming the key."""
    for f in dataclasses.fields(obj):
        choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds") or {}
        if choices is None and not bounds:
            continue
        value = getattr(obj, f.name)
        items = value if isinstance(value, (tuple, list)) else [value]
        for item in items:
            if item is None:
                continue
            ok = item in choices if choices is not None else \
                isinstance(item, (int, float)) and all(_RANGES[k][1](item, b) for k, b in bounds.items())
            if not ok:
                each = "each value " if isinstance(value, (tuple, list)) else ""
                shown = ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value
                raise ConfigError(f"{prefix}.{f.name}={shown}: {each}must be {allowed(f)}")


@dataclass
class DataConfig:
    name: str = option("imagenet", choices=DATASET_NAMES)   # folder/imagenet: data.path; the others are embedded
    path: Optional[str] = None          # ImageFolder root (imagenet/folder)
    image_size: int = option(256, gt=0)
    flip: bool = True
    num_workers: int = option(4, ge=0)
    pin_memory: bool = True


@dataclass
class DiffusionConfig:
    P_mean: float = -0.8
    P_std: float = option(0.8, gt=0)
    t_eps: float = option(0.05, gt=0, le=1)         # clamp of 1 - t in the velocity
    noise_scale: Optional[float] = option(None, gt=0)   # None: image_size / 256
    label_drop_prob: float = option(0.1, ge=0, le=1)


@dataclass
class OptimConfig:
    batch_size: int = option(128, gt=0)             # per rank
    blr: float = option(5e-5, gt=0)                 # lr = blr * global batch / 256
    lr: Optional[float] = option(None, gt=0)        # absolute lr, overrides blr
    warmup_epochs: float = option(5.0, ge=0)
    schedule: str = option("constant", choices=("constant", "cosine"))
    min_lr: float = option(0.0, ge=0)
    weight_decay: float = option(0.0, ge=0)
    betas: tuple[float, float] = option((0.9, 0.95), ge=0, lt=1)
    grad_clip: Optional[float] = option(None, gt=0)
    fused: bool = True                  # fused AdamW kernel (CUDA and CPU)
    ema_decays: tuple[float, float] = option((0.9999, 0.9996), gt=0, lt=1)


@dataclass
class TrainConfig:
    epochs: float = option(600.0, ge=0)
    max_steps: Optional[int] = option(None, ge=0)   # stop after this many optimizer steps (overrides epochs)
    seed: int = option(0, ge=0)
    log_every: int = option(100, gt=0)
    ckpt_every: int = option(1000, gt=0)            # steps between checkpoints (always one at the end)
    keep_every: int = option(0, ge=0)   # also keep every N-th step's checkpoint forever (0: only the latest)
    sample_every: int = option(0, ge=0)  # steps between sample grids (0: only at the end)
    attention: str = option("fast", choices=ATTENTION_PATHS)   # fast (SDPA) | exact (official fp32-logit numerics)
    precision: str = option("bf16", choices=("bf16", "fp32"))  # bf16 autocast on CUDA | fp32
    compile: bool = False
    grad_checkpointing: bool = False    # activation checkpointing per block (memory for L/H/G)
    grad_accum: int = option(1, ge=1)   # micro-batches per optimizer step: one process plays grad_accum ranks of
    #                                     optim.batch_size images (global batch = batch_size x processes x grad_accum)
    gpu_memory_gib: Optional[float] = option(None, gt=0)   # the GPU a run must fit (None: the visible one, else 80 GB)
    tf32: bool = True                   # CUDA: TF32 matmuls/convolutions for fp32 ops (bf16 autocast is unaffected)
    cudnn_benchmark: bool = True        # CUDA: cuDNN picks its fastest kernels for the fixed shapes
    ddp_broadcast_buffers: bool = False  # DDP: rank 0's buffers every step (JiT's are constant; on anyway when a
    #                                      plugin's trainable modules have buffers)
    grad_norm: str = option("step", choices=("step", "log"))   # gradient norm every step (and checked for NaN)
    #                                     | only on logged steps when optim.grad_clip is unset (one pass less)
    nan_policy: str = option("stop", choices=("stop", "skip"))
    max_skipped_steps: int = option(10, ge=0)
    device: str = "auto"                # auto | cpu | cuda | cuda:N (checked by check_config)


@dataclass
class SampleConfig:
    method: str = option("heun", choices=SAMPLE_METHODS)
    steps: int = option(50, gt=0)
    cfg: float = option(2.9, ge=0)
    interval: tuple[float, float] = option((0.1, 1.0), ge=0, le=1)   # CFG applies for lo < t < hi
    batch_size: int = option(64, gt=0)
    num_images: int = option(50_000, gt=0)


@dataclass
class LogConfig:
    """Experiment trackers besides ``metrics.jsonl`` (rank 0 only; built-in plugins of :mod:`jit_core.trackers`)."""

    tensorboard: bool = False           # event files in <run>/tb/ (pip install 'jit-vco[tensorboard]')
    wandb: bool = False                 # Weights & Biases (pip install 'jit-vco[wandb]'); its id in <run>/wandb-run.json
    wandb_project: str = "jit-vco"
    wandb_entity: Optional[str] = None  # team or user (None: your default entity)
    wandb_name: Optional[str] = None    # display name (None: the run folder's name)
    wandb_mode: str = option("online", choices=("online", "offline", "disabled"))   # offline: sync later (wandb sync)


@dataclass
class Config:
    model: str = "JiT-B/16"
    model_overrides: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plugins: list[str] = field(default_factory=list)
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_dir: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        cfg = cls()
        for key, value in _flatten(data).items():
            set_key(cfg, key, value)
        return cfg


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("model_overrides",) and not (prefix == "" and key == "plugin_options"):
            out.update(_flatten(value, full + "."))
        elif prefix == "" and key == "plugin_options":
            for plugin, opts in value.items():
                for k, v in opts.items():
                    out[f"{plugin}.{k}"] = v
        else:
            out[full] = value
    return out


# --------------------------------------------------------------------------------------- presets
def _preset_jit(model: str, image_size: int, cfg_scale: float, checkpointing: bool = False) -> Config:
    """The paper's recipe for ``model`` (128 images per GPU); ``checkpointing`` where 128 images do not fit an
    80 GB GPU without it (the memory model of jit_core/model/budget.py; tests/test_budget.py checks each preset)."""
    cfg = Config(model=model)
    cfg.data.image_size = image_size
    # JPEG decode + ADM crop costs 4-6 ms of CPU per image; a B/16 H100 at 40 % MFU takes ~2,600 img/s
    # (benchmarks/RESULTS.md, "Data loading"): 12 workers per GPU instead of the generic 4.
    cfg.data.num_workers = 12
    cfg.sample.cfg = cfg_scale
    cfg.train.grad_checkpointing = checkpointing
    return cfg


def _preset_tiny() -> Config:
    """A small JiT on Fashion-MNIST (32 px, patch 4) that trains on 2 CPU cores in a few minutes.

    300 steps of 64 images (lr 1e-3, short warmup, fast EMAs), Heun-10 sampling with CFG 2 on the
    interval; evaluation on 500 samples. ``vco-tiny`` is the same run with the V-Co plugin.
    """
    cfg = Config(model="JiT-S/4")
    cfg.data = DataConfig(name="fashion_mnist", image_size=32, num_workers=0, pin_memory=False)
    cfg.diffusion.noise_scale = 1.0     # JiT's image_size / 256 rule would give 0.125 at 32 px: too little noise
    cfg.optim = OptimConfig(batch_size=64, blr=4e-3, warmup_epochs=0.05, ema_decays=(0.98, 0.99))  # short run: fast EMAs
    cfg.train = TrainConfig(epochs=1, max_steps=300, log_every=10, ckpt_every=100, sample_every=0,
                            attention="fast", precision="fp32", device="cpu")
    cfg.sample = SampleConfig(method="heun", steps=10, cfg=2.0, interval=(0.1, 1.0), batch_size=100, num_images=500)
    return cfg


def _widened(cfg: Config, model: str) -> Config:
    """``cfg`` with the widened model: a parameter-matched control, the same run but for the network's width."""
    cfg.model = model
    return cfg


def _preset_test() -> Config:
    """The smallest real run (digits, JiT-T/4) for unit tests."""
    cfg = Config(model="JiT-T/4")
    cfg.data = DataConfig(name="digits", image_size=32, num_workers=0, pin_memory=False)
    cfg.optim = OptimConfig(batch_size=16, lr=1e-3, warmup_epochs=0.0)
    cfg.train = TrainConfig(epochs=1, max_steps=6, log_every=2, ckpt_every=3, attention="exact",
                            precision="fp32", device="cpu")
    cfg.sample = SampleConfig(method="heun", steps=4, cfg=1.5, batch_size=10, num_images=20)
    return cfg


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "jit-b16": lambda: _preset_jit("JiT-B/16", 256, 2.9),
    "jit-b32": lambda: _preset_jit("JiT-B/32", 512, 2.9),
    "jit-l16": lambda: _preset_jit("JiT-L/16", 256, 2.4, checkpointing=True),
    "jit-l32": lambda: _preset_jit("JiT-L/32", 512, 2.5, checkpointing=True),
    "jit-h16": lambda: _preset_jit("JiT-H/16", 256, 2.2, checkpointing=True),
    "jit-h32": lambda: _preset_jit("JiT-H/32", 512, 2.3, checkpointing=True),
    "jit-g16": lambda: _preset_jit("JiT-G/16", 256, 2.2, checkpointing=True),
    "jit-b16-wide": lambda: _preset_jit("JiT-B/16-wide", 256, 2.9),   # JiT widened to a two-stream B/16's size
    "tiny": _preset_tiny,
    "jit-tiny-wide": lambda: _widened(_preset_tiny(), "JiT-S/4-wide"),
    "test": _preset_test,
}


def register_preset(name: str, factory: typing.Callable[[], Config]) -> None:
    """Plugins add presets (V-Co: ``vco-b16``) through the ``jit_presets`` hook."""
    PRESETS[name] = factory


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------- overrides
def _suggest(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _all_keys(cfg: Config) -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def _finite(value: Any) -> bool:
    """False only for a value that reads as an infinite or NaN float (other bad values fail their own way)."""
    try:
        return math.isfinite(float(value))
    except (ValueError, TypeError, OverflowError):
        return True


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn a CLI string (or JSON value) into the annotated type, or fail naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if annotation is float and not _finite(value):   # inf / nan: no setting means that (cfg=inf: blank images)
        raise ConfigError(f"bad value {value!r} for {key}: expected a finite number")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if annotation is int and isinstance(value, str):
                return int(float(value)) if float(value).is_integer() else int(value)
            return annotation(value)
        if origin in (tuple, list):
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).strip("[]()").split(",") if v.strip()]
            inner = args[0] if args else str
            out = [_coerce(key, v.strip() if isinstance(v, str) else v, inner) for v in items]
            if origin is tuple and len(args) == 2 and args[1] is not Ellipsis and len(out) != 2:
                raise ValueError
            return tuple(out) if origin is tuple else out
        if origin is dict or annotation is dict:
            return value if isinstance(value, dict) else json.loads(value)
    except ConfigError:     # an element of a list or tuple, already named
        raise
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"bad value {value!r} for {key}: expected {name}")


def set_key(cfg: Config, key: str, value: Any, plugin_schemas: Optional[dict] = None) -> None:
    """Set a dotted key (``optim.blr``) or a plugin option (``vco.drift_coef``)."""
    hints = typing.get_type_hints(Config)
    head, _, rest = key.partition(".")
    if head in hints and dataclasses.is_dataclass(getattr(cfg, head)) and rest:
        section = getattr(cfg, head)
        shints = typing.get_type_hints(type(section))
        if rest not in shints:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, _all_keys(cfg))}")
        setattr(section, rest, _coerce(key, value, shints[rest]))
    elif head in hints and not rest:
        if dataclasses.is_dataclass(getattr(cfg, head)):
            raise ConfigError(f"{key} is a section, not a value: give its keys ({key}.KEY=VALUE, or a table in a file)")
        if head == "plugins":
            value = [] if value in ("none", "", None, []) else value
        setattr(cfg, head, _coerce(key, value, hints[head]))
    elif rest and head not in hints:
        # plugin namespace: validated against the plugin's schema once plugins are loaded; a plugin
        # enabled by module path has a dotted namespace, so the longest matching plugin name wins
        owner = option_namespace(key, plugin_schemas or {})
        if owner:
            head, rest = owner, key[len(owner) + 1:]
        if plugin_schemas is not None and head in plugin_schemas:
            schema = plugin_schemas[head]
            fields = {f.name: f for f in dataclasses.fields(schema)}
            if rest not in fields:
                raise ConfigError(f"unknown option {key!r} of plugin {head!r}{_suggest(rest, fields)}; "
                                  f"options: {', '.join(fields)}")
            value = _coerce(key, value, typing.get_type_hints(schema)[rest])
        cfg.plugin_options.setdefault(head, {})[rest] = value
    else:
        raise ConfigError(f"unknown config key {key!r}{_suggest(key, _all_keys(cfg))}")


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. optim.blr=1e-4)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def load_config(preset: Optional[str] = None, file: Optional[str | Path] = None,
                overrides: typing.Sequence[str] = ()) -> Config:
    """Preset, then a TOML/JSON file, then ``KEY=VALUE`` overrides (later wins)."""
    cfg = get_preset(preset) if preset else Config()
    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = read_config_file(path)
        for key, value in _flatten(data).items():
            set_key(cfg, key, value)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    return cfg


def read_config_file(path: Path) -> dict:
    """The table of keys in a TOML or JSON config file (a run's ``config.json`` included); ConfigError naming the
    file and the problem (not valid, nested too deeply, not a table, a section that is not a table)."""
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(path.read_text()) if kind == "TOML" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}; fix that line") from exc
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config: fix or replace it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of keys, not {type(data).__name__}")
    options = data.get("plugin_options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError(f"config file {path}: plugin_options must be a table of tables (plugin -> options)")
    return data


def option_namespace(key: str, plugins: typing.Iterable[str]) -> Optional[str]:
    """The plugin (of ``plugins``, the names they are enabled by) that owns the dotted option ``key``.

    ``vco.encoder`` -> ``vco``; a plugin enabled by module path owns its path as a prefix
    (``my_pkg.my_plugin.w`` -> ``my_pkg.my_plugin``); the longest match wins; None if no plugin owns it.
    A plugin's options live under the name it is enabled by, so this needs no plugin to be imported
    (``jit slurm`` uses it to keep each sweep element's options).
    """
    return max((p for p in plugins if key.startswith(p + ".")), key=len, default=None)


def flat_config(config: dict) -> dict:
    """A config dict (``Config.to_dict()``) as dotted keys; plugin options as ``<plugin>.<option>``; no ``run_dir``."""
    out = {}
    for key, value in config.items():
        if key == "run_dir":
            continue
        if key == "plugin_options":
            out.update({f"{p}.{k}": v for p, opts in value.items() for k, v in opts.items()})
        elif isinstance(value, dict) and key != "model_overrides":
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def flat_plugin_options(cfg: Config) -> dict[str, Any]:
    """Every plugin option of ``cfg`` as ``{"plugin.option": value}`` (the command line's form)."""
    return {f"{plugin}.{k}": v for plugin, opts in cfg.plugin_options.items() for k, v in opts.items()}


def validate_plugin_options(cfg: Config, schemas: dict[str, type]) -> None:
    """Check every ``plugin.option`` against its plugin's dataclass schema and fill in defaults.

    ``schemas``: ``{name the plugin is enabled by: options dataclass}``. Types, then :func:`option`
    choices and ranges, then the schema's ``check(self, config)`` method if it has one. Options for a
    plugin that is not enabled are an error. Afterwards :func:`plugin_options` finds each plugin's
    options by their type.
    """
    given = flat_plugin_options(cfg)
    cfg.plugin_options = {}
    for key, value in given.items():
        owner = option_namespace(key, schemas)
        if owner is None:
            head = key.split(".", 1)[0]
            raise ConfigError(f"option {key}: {head!r} is not an enabled plugin with options"
                              f"{_suggest(head, schemas)}; enabled: {', '.join(schemas) or 'none'} "
                              f"(enable it with --plugin {head}, or drop {key})")
        cfg.plugin_options.setdefault(owner, {})[key[len(owner) + 1:]] = value
    for plugin, schema in schemas.items():
        for key, value in list(cfg.plugin_options.get(plugin, {}).items()):
            set_key(cfg, f"{plugin}.{key}", value, schemas)
        defaults = {f.name: getattr(schema(), f.name) for f in dataclasses.fields(schema)}
        cfg.plugin_options[plugin] = {**defaults, **cfg.plugin_options.get(plugin, {})}
    cfg._option_namespaces = {schema: plugin for plugin, schema in schemas.items()}
    for plugin, schema in schemas.items():
        opts = schema(**cfg.plugin_options[plugin])
        check_fields(opts, plugin)
        if callable(getattr(opts, "check", None)):
            opts.check(cfg)


def plugin_options(cfg: Config, schema: type):
    """The typed options object of the plugin whose options dataclass is ``schema`` (defaults filled in).

    Resolves the same whichever name the plugin was enabled by (entry point or module path), once
    :func:`validate_plugin_options` has run (the trainer, ``load_run`` and ``jit train --dry-run`` do).
    """
    if isinstance(schema, str):
        raise TypeError(f"plugin_options(config, {schema!r}, ...): pass the options dataclass only, "
                        "plugin_options(config, MyOptions); the namespace is the name the plugin was enabled by")
    namespace = getattr(cfg, "_option_namespaces", {}).get(schema)
    if namespace is None:
        raise ConfigError(f"{schema.__name__} are not the options of a plugin enabled in this config "
                          f"(plugins: {', '.join(cfg.plugins) or 'none'}); check the config first with "
                          "jit_core.config.validate_plugin_options(config, plugins.option_schemas())")
    return schema(**cfg.plugin_options.get(namespace, {}))


def check_values(cfg: Config) -> None:
    """Every :func:`option` field (choices and ranges) and the checks across fields (the CFG interval's order):
    what a saved config must pass before it is sampled or evaluated (the device it trained on need not exist)."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            check_fields(section, f.name)
    lo, hi = cfg.sample.interval
    if not lo < hi:
        raise ConfigError(f"sample.interval={lo},{hi}: the CFG interval needs lo < hi (e.g. sample.interval=0.1,1.0)")


def check_config(cfg: Config) -> None:
    """The core's start-up checks of ``cfg`` that need no data or plugin: :func:`check_values`, then the device.

    The rest of a start runs in :func:`jit_core.training.startup.start_checks`: plugins and their
    options, the dataset (name, path), the model (name, image size), the batch sampler, the run folder.
    """
    check_values(cfg)
    check_device(cfg.train.device)


def check_device(name: str) -> None:
    """``train.device``: auto, cpu, cuda, cuda:N or mps, and available on this machine."""
    import re
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"train.device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"train.device={name} but {'no CUDA device is' if not count else f'only {count} CUDA devices are'} "
                              "visible on this machine: use train.device=cpu (or auto)")
