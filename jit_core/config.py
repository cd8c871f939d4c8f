"""Typed run configuration: dataclasses, named presets, config files and dotted overrides.

``Config`` is what a run is: ``jit train --preset jit-b16 optim.blr=1e-4 vco.drift_coef=5``.
Plugin options live under their plugin's namespace (``vco.*``) and are typed by the plugin.
Unknown keys and ill-typed values fail with a message naming the key and the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import tomllib


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


@dataclass
class DataConfig:
    name: str = "imagenet"              # imagenet | folder | fashion_mnist | digits
    path: Optional[str] = None          # ImageFolder root (imagenet/folder)
    image_size: int = 256
    flip: bool = True
    num_workers: int = 4
    pin_memory: bool = True


@dataclass
class DiffusionConfig:
    P_mean: float = -0.8
    P_std: float = 0.8
    t_eps: float = 0.05                 # clamp of 1 - t in the velocity
    noise_scale: Optional[float] = None  # None: image_size / 256
    label_drop_prob: float = 0.1


@dataclass
class OptimConfig:
    batch_size: int = 128               # per rank
    blr: float = 5e-5                   # lr = blr * global batch / 256
    lr: Optional[float] = None          # absolute lr, overrides blr
    warmup_epochs: float = 5.0
    schedule: str = "constant"          # constant | cosine
    min_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: Optional[float] = None
    fused: bool = True                  # fused AdamW kernel (CUDA and CPU)
    ema_decays: tuple[float, float] = (0.9999, 0.9996)


@dataclass
class TrainConfig:
    epochs: float = 600.0
    max_steps: Optional[int] = None     # stop after this many optimizer steps (overrides epochs)
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 1000              # steps between checkpoints (always one at the end)
    keep_every: int = 0                 # also keep every N-th step's checkpoint forever (0: only the latest)
    sample_every: int = 0               # steps between sample grids (0: only at the end)
    attention: str = "fast"             # fast (SDPA) | exact (official fp32-logit numerics)
    precision: str = "bf16"             # bf16 autocast on CUDA | fp32
    compile: bool = False
    grad_checkpointing: bool = False    # activation checkpointing per block (memory for L/H/G)
    nan_policy: str = "stop"            # stop | skip
    max_skipped_steps: int = 10
    device: str = "auto"


@dataclass
class SampleConfig:
    method: str = "heun"                # heun | euler
    steps: int = 50
    cfg: float = 2.9
    interval: tuple[float, float] = (0.1, 1.0)
    batch_size: int = 64
    num_images: int = 50_000


@dataclass
class Config:
    model: str = "JiT-B/16"
    model_overrides: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
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
def _preset_jit(model: str, image_size: int, cfg_scale: float) -> Config:
    cfg = Config(model=model)
    cfg.data.image_size = image_size
    cfg.sample.cfg = cfg_scale
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
    "jit-l16": lambda: _preset_jit("JiT-L/16", 256, 2.4),
    "jit-l32": lambda: _preset_jit("JiT-L/32", 512, 2.5),
    "jit-h16": lambda: _preset_jit("JiT-H/16", 256, 2.2),
    "jit-h32": lambda: _preset_jit("JiT-H/32", 512, 2.3),
    "jit-g16": lambda: _preset_jit("JiT-G/16", 256, 2.2),
    "tiny": _preset_tiny,
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


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn a CLI string (or JSON value) into the annotated type, or fail naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
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
        if head == "plugins":
            value = [] if value in ("none", "", None, []) else value
        setattr(cfg, head, _coerce(key, value, hints[head]))
    elif rest and head not in hints:
        # plugin namespace: validated against the plugin's schema once plugins are loaded; a plugin
        # enabled by module path has a dotted namespace, so the longest matching plugin name wins
        owner = max((p for p in (plugin_schemas or {}) if key.startswith(p + ".")), key=len, default=None)
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
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        for key, value in _flatten(data).items():
            set_key(cfg, key, value)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    return cfg


def validate_plugin_options(cfg: Config, schemas: dict[str, type]) -> None:
    """Check every ``plugin.option`` against its plugin's dataclass schema and fill in defaults."""
    for plugin, options in list(cfg.plugin_options.items()):
        if plugin in schemas:
            continue
        for key in list(options):  # a plugin named by module path: "pkg.mod.opt" was split at the first dot
            full = f"{plugin}.{key}"
            owner = max((s for s in schemas if full.startswith(s + ".")), key=len, default=None)
            if owner:
                cfg.plugin_options.setdefault(owner, {})[full[len(owner) + 1:]] = options.pop(key)
        if not options:
            del cfg.plugin_options[plugin]
    for plugin, options in cfg.plugin_options.items():
        if plugin not in schemas:
            raise ConfigError(f"options given for {plugin!r}, which is not an enabled plugin with options"
                              f"{_suggest(plugin, schemas)}; enabled: {', '.join(schemas) or 'none'}")
    for plugin, schema in schemas.items():
        given = dict(cfg.plugin_options.get(plugin, {}))
        for key, value in list(given.items()):
            set_key(cfg, f"{plugin}.{key}", value, schemas)
        defaults = {f.name: getattr(schema(), f.name) for f in dataclasses.fields(schema)}
        cfg.plugin_options[plugin] = {**defaults, **cfg.plugin_options.get(plugin, {})}


def plugin_options(cfg: Config, plugin: str, schema: type):
    """The typed options object of one plugin (defaults filled in)."""
    return schema(**cfg.plugin_options.get(plugin, {}))
