"""The ``jit`` command line (click), lazy: ``jit --help`` imports neither torch nor any command's module.

The core's own small commands live here; the others are listed in :data:`LAZY_COMMANDS` (module, factory,
one-line help) and imported only when run. Other packages add commands through ``jit_core.commands``
entry points (listed by name and docstring, read without importing), plugins through ``jit_add_commands``
(their modules are imported only when a name is not found otherwise, or by :func:`add_all_commands`).
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import json
import logging
import signal
from pathlib import Path

import click

from jit_core import __version__
from jit_core.clioptions import trust_options
from jit_core.config import ConfigError
from jit_core.plugins.presets import build_config

COMMANDS_GROUP = "jit_core.commands"   # entry points: name -> a click command or group added to `jit`

# name -> (module, factory returning the click command, the one-line help `jit --help` shows).
# tests/test_cli_packaging.py checks each help line against the command's own docstring.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("jit_core.runs.convert", "convert_command",
                "Import an official JiT or V-Co checkpoint-last.pth as OUT_DIR/checkpoints/step-00000000."),
    "evaluate": ("jit_core.eval.evaluate", "evaluate_command",
                 "Generate samples from RUN_DIR per the evaluation protocol and compute metrics with provenance."),
    "ref-stats": ("jit_core.eval.fid", "ref_stats_command",
                  "Reference Inception statistics (mu, sigma) of IMAGE_FOLDER for FID."),
    "compare": ("jit_core.eval.report", "compare_command",
                "Compare runs or arms: metrics with 95 % intervals and a verdict, loss curves, samples, config diff."),
    "study": ("jit_core.study.command", "study_command",
              "Train and evaluate a named study's arms x seeds, then report them with intervals."),
    "export": ("jit_core.runs.export", "export_command",
               "Write a run's checkpoint as an official JiT / V-Co checkpoint-last.pth (model, EMA1, EMA2)."),
    "push": ("jit_core.runs.push", "push_command",
             "Upload a run's newest checkpoint to the Hugging Face Hub with a generated model card."),
}


def _entry_point_commands() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=COMMANDS_GROUP)}


def _module_source(module: str) -> str:
    """The source text of ``module``, found without importing it (its parent packages are imported to find it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no source file for module {module!r}")
    return Path(spec.origin).read_text()


def _docstring_line(module: str, attr: str | None) -> str:
    """The first docstring line of ``attr`` in ``module`` (the module's own without ``attr``), read from the
    source without importing the module (its parent packages are imported to find it); '' if not found."""
    try:
        tree = ast.parse(_module_source(module))
    except Exception:  # noqa: BLE001 -- only a help line is at stake
        return ""
    node = tree if attr is None else next(
        (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == attr), None)
    doc = ast.get_docstring(node) if node is not None else None
    return (doc or "").strip().split("\n")[0]


def _plugins_with_commands() -> dict[str, str]:
    """Installed plugins whose module defines ``jit_add_commands`` -> that hook's docstring line (not imported)."""
    from jit_core.plugins import installed_plugins
    found = {}
    for name, ep in installed_plugins().items():
        module = ep.value.split(":")[0]
        try:
            tree = ast.parse(_module_source(module))
        except Exception:  # noqa: BLE001 -- a broken plugin is reported when its commands are loaded
            found[name] = ""
            continue
        hook = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "jit_add_commands"), None)
        if hook is not None:
            found[name] = (ast.get_docstring(hook) or "").strip().split("\n")[0]
    return found


def _load_plugin_commands(group: click.Group) -> None:
    """Every installed plugin's ``jit_add_commands`` (through the one dispatch path; a broken plugin warns)."""
    from jit_core.plugins.presets import from_installed
    from_installed("jit_add_commands", cli=group)


class JitGroup(click.Group):
    """The ``jit`` group: lazy commands, and our expected errors as one clear line instead of a traceback."""

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(LAZY_COMMANDS) | set(_entry_point_commands()))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        if name in LAZY_COMMANDS:
            module, factory, _ = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), factory)(), name)
        elif name in (eps := _entry_point_commands()):
            self.add_command(eps[name].load(), name)
        else:   # a plugin's command (or a typo): import the plugins, which add theirs
            _load_plugin_commands(self)
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        """Like click's, but from the stored help lines: listing a command does not import it."""
        rows = {name: cmd.help or cmd.short_help or "" for name, cmd in self.commands.items() if not cmd.hidden}
        for name, (_, _, text) in LAZY_COMMANDS.items():
            rows.setdefault(name, text)
        for name, ep in _entry_point_commands().items():
            module, _, attr = ep.value.partition(":")
            rows.setdefault(name, _docstring_line(module.strip(), attr.strip() or None))
        plugins = {name: text or f"the commands of plugin {name}"
                   for name, text in _plugins_with_commands().items() if name not in rows}
        limit = formatter.width - 6 - max(map(len, [*rows, *plugins]), default=0)
        with formatter.section("Commands"):
            formatter.write_dl([(n, _short(t, limit)) for n, t in sorted(rows.items())])
        if plugins:
            with formatter.section("Plugin commands (imported when used)"):
                formatter.write_dl([(n, _short(t, limit)) for n, t in sorted(plugins.items())])

    def invoke(self, ctx):
        from jit_core.plugins import PluginError
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:   # the second Ctrl-C (the first one stops training cleanly)
            click.echo("aborted: the step in progress is lost; the last complete checkpoint is kept "
                       "(resume with jit train --resume RUN)", err=True)
            ctx.exit(128 + signal.SIGINT)
        except (ConfigError, PluginError, FileNotFoundError, KeyError) as exc:
            raise click.ClickException(str(exc).strip("'\"")) from exc
        except Exception as exc:  # known error types of the other modules, by name to keep imports lazy
            if type(exc).__name__ in ("DataError", "CheckpointError", "CorruptCheckpointError", "NonFiniteLossError",
                                      "EncoderWeightsError", "ForeignCheckpointError", "WriteError", "HubError"):
                raise click.ClickException(str(exc)) from exc
            raise


def _short(text: str, limit: int) -> str:
    """A command's help as `jit --help` lists it: its first sentence, cut at a word to fit ``limit``."""
    words = text.replace("``", "`").split("\n\n")[0].split()
    sentence = []
    for word in words:
        sentence.append(word)
        if word.endswith("."):
            break
    line, limit = " ".join(sentence), max(limit, 30)
    if len(line) <= limit:
        return line
    cut = line[:limit - 3].rsplit(" ", 1)[0]
    return cut + "..."


@click.group(cls=JitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="jit (jit-vco)", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """JiT pixel-space diffusion with pluggable co-denoising (V-Co: `--plugin vco`).

    \b
    Quick start (CPU, Fashion-MNIST, a few minutes):
      jit train --preset tiny --run-dir runs/tiny
      jit sample runs/tiny --out samples/
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_options(fn):
    """The options that describe a run; shared by `jit train` and `jit slurm submit`."""
    fn = click.argument("overrides", nargs=-1)(fn)
    fn = click.option("--plugin", "plugins", multiple=True,
                      help="Enable a plugin by name (vco) or module path (my_pkg.my_plugin). Repeatable.")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or JSON config file.")(fn)
    fn = click.option("--preset", help="Named preset: jit-b16, tiny, vco-b16, ... (see `jit presets`).")(fn)
    return fn


@cli.command()
@run_options
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (created; resumed if it holds this run).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
              help="Resume the run in this folder with its saved config (overrides may lengthen it).")
@click.option("--allow-change", "allow_changes", multiple=True, metavar="KEY",
              help="With --resume: let this config key differ from the saved config (e.g. optim.lr after a "
                   "divergence); recorded in RUN/history.jsonl. Repeatable.")
@click.option("--dry-run", is_flag=True,
              help="Run every start-up check (plugins, options, data, model, batches, run folder), print the "
                   "resolved config and exit; nothing is written.")
def train(preset, config_file, plugins, overrides, run_dir, resume_dir, allow_changes, dry_run):
    """Train (or resume) a run. OVERRIDES are KEY=VALUE, e.g. optim.blr=1e-4 train.max_steps=100 vco.drift_coef=5.

    \b
    jit train --preset jit-b16 --run-dir runs/b16 data.path=/data/imagenet
    jit train --preset jit-b16 --plugin vco --run-dir runs/b16-vco data.path=/data/imagenet
    """
    from jit_core.training import train as run_train
    if resume_dir:
        from jit_core.api import load_run_config
        from jit_core.runs.checkpoint import list_checkpoints
        if not list_checkpoints(resume_dir):
            raise ConfigError(f"--resume {resume_dir}: no checkpoint to resume from (nothing in "
                              f"{Path(resume_dir) / 'checkpoints'}); start a run there with jit train --run-dir")
        from jit_core.config import parse_override, set_key
        cfg = load_run_config(resume_dir, trust_plugins=plugins)  # --plugin names the modules the user trusts
        stray = [p for p in plugins if p not in cfg.plugins]
        if stray:
            raise ConfigError(f"--plugin {stray[0]} with --resume: the run in {resume_dir} does not use it (its plugins: "
                              f"{', '.join(cfg.plugins) or 'none'}); with --resume, --plugin only trusts a module the run names")
        for text in overrides:
            set_key(cfg, *parse_override(text))
        run_dir = resume_dir
    else:
        cfg = build_config(preset, config_file, plugins, overrides, run_dir)
    if dry_run:
        from jit_core.config import evolve
        from jit_core.distributed import DistInfo, resolve_device
        from jit_core.plugins import resolve_run
        from jit_core.training.run_dir import allowed_keys
        from jit_core.training.startup import setup_plugins, start_checks
        cfg, plugins = resolve_run(evolve(cfg, run_dir=str(run_dir)) if run_dir else cfg)   # as the trainer does
        dist = DistInfo(device=resolve_device(cfg.train.device))
        startup = start_checks(cfg, run_dir, dist, plugins=plugins, allow_changes=allowed_keys(cfg, allow_changes))
        setup_plugins(startup, cfg, run_dir, dist, dry_run=True)
        if startup.memory:
            click.echo(startup.memory.describe(cfg), err=True)
        click.echo(cfg.to_json())
        return
    result = run_train(cfg, run_dir, allow_changes=allow_changes)
    losses = ", ".join(f"{k}={v:.4f}" for k, v in result.losses.items())
    click.echo(f"{result.status} at step {result.step}: {losses}\nrun folder: {result.run_dir}")
    if result.stop_signal == signal.SIGINT:     # Ctrl-C: checkpointed, but the shell should see an interrupt
        click.get_current_context().exit(128 + signal.SIGINT)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Folder for PNGs and grid.png (default RUN/samples/cli).")
@click.option("--labels", default="", help="Comma-separated class labels (default: 8 of each of the first 10 classes).")
@click.option("--num-per-class", default=8, show_default=True)
@click.option("--cfg", type=float, help="CFG scale (default: the run's).")
@click.option("--steps", type=int, help="Sampler grid points (default: the run's).")
@click.option("--method", type=click.Choice(["heun", "euler"]))
@click.option("--seed", default=0, show_default=True)
@click.option("--ema", default="ema1", type=click.Choice(["ema1", "ema2", "model"]), show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--streams", "save_streams", is_flag=True,
              help="Also save every plugin stream's final tensor as OUT/stream-<name>.safetensors.")
@trust_options
def sample(run_dir, out, labels, num_per_class, cfg, steps, method, seed, ema, device, save_streams, trust_plugins):
    """Sample PNG files and a grid from a run with fixed seeds and labels."""
    import torch

    from jit_core import api
    from jit_core.config import check_device
    from jit_core.distributed import resolve_device
    from jit_core.images import save_grid, save_pngs
    wanted = parse_labels(labels)
    if cfg is not None and not 0 <= cfg < float("inf"):   # nan fails both comparisons
        raise ConfigError(f"--cfg {cfg}: the CFG scale must be >= 0 and finite (1 = unguided)")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps}: the sampler needs at least 1 step")
    check_device(device)
    run = api.load_run(run_dir, ema=ema, device=resolve_device(device), trust_plugins=trust_plugins)
    num_classes = run.model.cfg.num_classes
    if wanted is not None:
        bad = [x for x in wanted if not 0 <= x < num_classes]
        if bad:
            raise ConfigError(f"--labels {labels}: label {bad[0]} is not a class of this run (0 .. {num_classes - 1}; "
                              f"{num_classes} is the null class)")
        lab = torch.tensor(wanted)
    else:
        lab = torch.arange(min(10, num_classes)).repeat_interleave(num_per_class)
    result = api.generate(run, lab, cfg=cfg, steps=steps, method=method, seed=seed, progress=True,
                          return_streams=save_streams)
    images, streams = result if save_streams else (result, {})
    out = Path(out or Path(run_dir) / "samples" / "cli")
    save_pngs(images, out)
    grid = save_grid(images, out / "grid.png", nrow=num_per_class if not labels else None, scale=2)
    for name, tensor in streams.items():
        from jit_core.durable import save_safetensors
        save_safetensors(out / f"stream-{name}.safetensors", {name: tensor.contiguous(), "labels": lab.clone()})
    saved = "".join(f"; stream {n}: {out / f'stream-{n}.safetensors'}" for n in streams)
    click.echo(f"{len(images)} images (step {run.step}, {ema}) in {out}; grid: {grid}{saved}")


def parse_labels(text: str) -> list[int] | None:
    """``--labels 1,2,3`` -> [1, 2, 3] (None when empty); ConfigError naming the bad item otherwise."""
    if not text:
        return None
    out = []
    for item in text.split(","):
        try:
            out.append(int(item.strip()))
        except ValueError:
            raise ConfigError(f"--labels {text}: {item.strip()!r} is not an integer class label "
                              "(e.g. --labels 0,1,2)") from None
    return out


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """Named model configs: trainable parameters, forward GFLOPs (MACs, the paper's unit) per image, and the
    estimated peak memory per GPU of training at 128 images (jit_core/model/budget.py)."""
    from jit_core.model import MODEL_CONFIGS, OFFICIAL_PARAM_COUNTS, budget
    rows = []
    for name, mc in MODEL_CONFIGS.items():
        p = budget.params(mc)
        rows.append({"name": name, "image_size": mc.image_size, "patch": mc.patch_size, "depth": mc.depth,
                     "hidden": mc.hidden_size, "heads": mc.num_heads, "trainable_params": p.trainable,
                     "with_pos_table": p.total, "official": OFFICIAL_PARAM_COUNTS.get(name),
                     "gmacs": sum(budget.forward_macs(mc).values()) / 1e9,
                     "train_gib_128": budget.training_memory(mc, batch=128).peak_gib,
                     "train_gib_128_ckpt": budget.training_memory(mc, batch=128, checkpointing=True).peak_gib})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':10} {'px':>4} {'p':>3} {'depth':>5} {'hidden':>6} {'trainable':>15} {'official':>15} "
               f"{'GMACs':>7} {'GiB@128':>8} {'+ckpt':>6}")
    for r in rows:
        off = f"{r['official']:,}" if r["official"] else "-"
        click.echo(f"{r['name']:10} {r['image_size']:>4} {r['patch']:>3} {r['depth']:>5} {r['hidden']:>6} "
                   f"{r['trainable_params']:>15,} {off:>15} {r['gmacs']:>7.1f} {r['train_gib_128']:>8.1f} "
                   f"{r['train_gib_128_ckpt']:>6.1f}")
    click.echo("GMACs: forward multiply-adds per image; GiB@128: estimated peak per GPU training 128 images "
               "(bf16, AdamW, 2 EMAs), + ckpt: with train.grad_checkpointing=true")


@cli.command()
def presets():
    """List named presets (the core's and the installed plugins')."""
    build_config(None, None, (), ())
    from jit_core.config import PRESETS
    for name in sorted(PRESETS):
        cfg = PRESETS[name]()
        click.echo(f"{name:10} model={cfg.model:9} data={cfg.data.name:13} plugins={','.join(cfg.plugins) or '-'}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugin", "enabled", multiple=True,
              help="Also load this plugin (name, module path or .py file) and mark it enabled; fails if it does not load.")
def plugins_cmd(as_json, enabled):
    """Installed plugins: name, version, source, enabled, hooks, options."""
    from jit_core.plugins import describe_all
    infos = describe_all(enabled)     # a --plugin that does not load fails (exit 1)
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2, default=str))
        return
    if not infos:
        click.echo("no plugins installed")
    for i in infos:
        state = "enabled" if i.enabled else f"installed, off (enable with --plugin {i.name})"
        click.echo(f"{i.name} {i.version} [{state}]\n  from: {i.source}\n  hooks: {', '.join(i.hooks)}")
        if i.options:
            click.echo("  options: " + ", ".join(f"{i.name}.{k}={v!r}" for k, v in i.options.items()))


def add_all_commands() -> None:
    """Import every command now (the lazy ones, other packages', the plugins'), as tests and tools that walk
    ``cli.commands`` need; ``jit`` itself imports a command only when it runs."""
    for name, (module, factory, _) in LAZY_COMMANDS.items():
        if name in cli.commands:
            continue
        try:
            cli.add_command(getattr(importlib.import_module(module), factory)(), name)
        except (ImportError, AttributeError) as exc:
            logging.getLogger("jit").debug("command %s unavailable: %s", name, exc)
    for name, ep in _entry_point_commands().items():   # `jit slurm` (slurm/) and other packages' command groups
        if name in cli.commands:
            continue
        try:
            cli.add_command(ep.load(), name)
        except Exception as exc:  # noqa: BLE001 -- a broken package must not break the CLI
            click.echo(f"warning: command {name!r} ({ep.value}) failed to import: {exc}", err=True)
    _load_plugin_commands(cli)     # every call: a plugin installed since the last one adds its commands too


_add_optional_commands = add_all_commands   # the name tests and jit_core.testing used before the CLI was lazy


def main() -> None:
    cli(prog_name="jit")


if __name__ == "__main__":
    main()
