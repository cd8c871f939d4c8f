"""``jit convert``: an official JiT / V-Co checkpoint as a jit-vco run folder.

The checkpoint is a local ``.pth`` or a Hub name ``hf://OWNER/REPO/PATH`` (fetched into the Hugging Face
cache by :mod:`jit_core.runs.hub`, then read like a local file). The ``.pth`` is read by
:func:`jit_core.official.layout.import_official` and written as
``OUT_DIR/checkpoints/step-00000000`` by :func:`jit_core.runs.checkpoint.save_checkpoint`; when the model
config can be read off the weights (:mod:`jit_core.official.infer`), ``OUT_DIR/config.json`` rebuilds the
network. Registered by ``jit_core.cli._add_optional_commands``.
"""
from __future__ import annotations

from pathlib import Path

from jit_core.durable import sha256_file, write_text
from jit_core.model import MODEL_CONFIGS, build_model
from jit_core.official.infer import _default_in_context_start, infer_model_config, streams_for
from jit_core.official.layout import import_official
from jit_core.runs import hub
from jit_core.runs.checkpoint import (
    WEIGHT_NAMES,
    CheckpointError,
    list_checkpoints,
    save_checkpoint,
)
from jit_core.runs.compat import check_compatible


def convert_command():
    """``jit convert OFFICIAL.pth|hf://OWNER/REPO/PATH OUT_DIR``: an official checkpoint as a jit-vco run folder."""
    import click

    @click.command("convert")
    @click.argument("checkpoint", metavar="OFFICIAL")
    @click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--check-config", "check_config", metavar="NAME",
                  help="Fail unless the weights fit this named model config (e.g. JiT-B/16).")
    @click.option("--in-context-start", type=int, default=None,
                  help="Block where the in-context tokens enter (not visible in the weights; default from a known "
                       "config of the same depth).")
    @click.option("--force", is_flag=True, help="Write into OUT_DIR even if it already holds checkpoints.")
    def convert(checkpoint: str, out_dir: Path, check_config: str | None, in_context_start: int | None,
                force: bool):
        """Import an official JiT or V-Co checkpoint-last.pth as OUT_DIR/checkpoints/step-00000000.

        OFFICIAL is a local file or a Hub name, hf://OWNER/REPO/PATH (or hf://OWNER/REPO@REVISION/PATH),
        downloaded into the Hugging Face cache (HF_HOME) unless it is there already."""
        try:
            official = hub.fetch(checkpoint) if hub.is_hub_name(checkpoint) else Path(checkpoint)
            imported = import_official(official)
            sd = imported["model"]
            streams = streams_for(sd)
            if check_config:
                try:
                    model = build_model(check_config, streams, device="meta")
                except (KeyError, ValueError) as e:
                    raise click.BadParameter(str(e).strip('"'), param_hint="--check-config") from e
                check_compatible(sd, model, str(official))
                if in_context_start is None:
                    in_context_start = model.cfg.in_context_start
            depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
            if in_context_start is None and _default_in_context_start(depth, sd["pos_embed"].shape[-1]) is None:
                raise click.UsageError(f"no known config has depth {depth}: pass --in-context-start "
                                       "(the block where the in-context tokens enter)")
            try:
                cfg = infer_model_config(sd, in_context_start)
            except CheckpointError as e:
                cfg = None
                click.echo(f"note: no config.json written ({e})", err=True)
            if not force and (list_checkpoints(out_dir) or (out_dir / "config.json").exists()):
                raise click.UsageError(f"{out_dir} already holds a run; choose an empty folder or pass --force")
            source = {"path": str(official.resolve()), "sha256": sha256_file(official.resolve()),
                      "layout": imported["layout"], "epoch": imported["epoch"]}
            if hub.is_hub_name(checkpoint):
                source["hub"] = str(hub.parse(checkpoint))
            state = {"step": 0, "epoch": imported["epoch"], "optimizer": {}, "source": source}
            ckpt = save_checkpoint(out_dir, 0, {k: imported[k] for k in WEIGHT_NAMES}, state)
            if cfg is not None:
                _write_config_hint(out_dir, cfg, imported["plugins"], imported.get("plugin_options", {}))
        except CheckpointError as e:
            raise click.ClickException(str(e)) from e
        total = sum(t.numel() for t in sd.values())
        click.echo(f"converted {checkpoint} ({imported['layout']} layout, epoch {imported['epoch']})\n"
                   f"  {len(sd)} tensors, {total - sd['pos_embed'].numel():,} trainable parameters "
                   f"({total:,} with the frozen position table)\n"
                   f"  streams: {', '.join(f'{s.name} ({s.channels} ch)' for s in streams)}\n"
                   f"  -> {ckpt}")
        if cfg is not None:
            click.echo("  model config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()) +
                       f"\n  -> {out_dir / 'config.json'}")

    return convert


def _write_config_hint(out_dir: Path, cfg: dict, plugins: list[str], plugin_options: dict | None = None) -> None:
    """A run ``config.json`` whose model (named base + overrides) rebuilds the converted network, with the
    plugins its official layout names (they add the streams beside the pixels) and the options they need for
    it (e.g. ``vco.fusion``)."""
    from jit_core.config import Config

    base = next((n for n, c in MODEL_CONFIGS.items() if (c.depth, c.hidden_size) == (cfg["depth"], cfg["hidden_size"])),
                "JiT-B/16")
    run = Config(model=base, model_overrides={k: v for k, v in cfg.items() if getattr(MODEL_CONFIGS[base], k) != v})
    run.data.image_size = cfg["image_size"]
    run.plugins = list(plugins)
    if plugin_options:
        run.plugin_options = {name: dict(opts) for name, opts in plugin_options.items()}
    write_text(out_dir / "config.json", run.to_json())
