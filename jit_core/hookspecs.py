"""The hook points of jit_core: the plugin author's reference.

A plugin is a module or object with functions marked ``@jit_core.hookimpl`` whose names are
the hooks below. Every hook is called with keyword arguments; an implementation may accept any
subset of them (pluggy passes only the names it declares). The core implements the JiT defaults
itself (``jit_core.plugins.defaults``), so with no plugin enabled a run is JiT.

How the core calls a hook (the hook reference says which, per hook):

- *every plugin*: each enabled plugin's implementation is called, in ``--plugin`` order, and the
  results are combined (streams appended, loss terms added, unconditional branches merged, ...);
- *per stream* (:data:`PER_STREAM`): called only on the plugin that added the stream; the pixel
  stream (and a plugin's stream when its answer is None) gets the core's default. So two plugins
  never compete for one stream;
- *one plugin* (:data:`ONE_PLUGIN`): at most one enabled plugin may answer (not None); two
  answers fail at start-up naming both plugins; no answer = the core's default.

Order of one training step, with the hook that acts at each point::

    images, labels  <- data (batch order from jit_batch_sampler)
    targets         <- each stream's target(images)        (streams from jit_streams)
    targets         <- jit_normalize(stream, target)       per stream, before noising
    t, noise        <- logit-normal t shared by all streams; z_s = t x_s + (1 - t) e_s
    drop            <- Bernoulli(diffusion.label_drop_prob) per sample
    uncond          <- null label where dropped + every plugin's jit_null_branch(drop, streams) merged:
                       blocked (query, key) stream pairs, loss masks, null inputs
    x_hat, hidden   <- model(uncond.inputs(z), t, uncond.labels, uncond.blocked, capture=jit_capture_blocks())
    loss            <- sum_s w_s * v_loss_s(masked) + sum(jit_loss_terms(step).values())

Sampling forms the unconditional half of the batched CFG forward from the same merged branch with
every sample dropped, and asks ``jit_guidance_scale`` for each stream's scale.
"""
from __future__ import annotations

import pluggy

PROJECT = "jit_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks the core calls only on the plugin that added the stream (the core's default for ``pixel``).
PER_STREAM = ("jit_normalize", "jit_guidance_scale")
#: Hooks at most one enabled plugin may answer (two answers: an error at start-up naming both).
ONE_PLUGIN = ("jit_batch_sampler",)


@hookspec
def jit_options():
    """Declare this plugin's options: return a dataclass *type* (or None).

    The options live in the config under the name the plugin is enabled by: its entry-point name
    (``vco.drift_coef=5`` on the command line, ``[vco]`` in a config file) or the module path it
    was given as (``--plugin my_pkg.my_plugin my_pkg.my_plugin.w=0.3``). Read them by their type,
    which resolves the same either way: ``jit_core.config.plugin_options(config, VCoOptions)``.

    Fields are typed; declare allowed values next to a field with ``jit_core.config.option``
    (``choices=``, ``ge=``/``gt=``/``le=``/``lt=``; a tuple is checked element-wise), and checks
    that involve the rest of the config in a method ``check(self, config)`` raising
    ``jit_core.config.ConfigError``. All of it runs at start-up and in ``jit train --dry-run``,
    before the run folder is touched; an unknown or ill-typed option, a value out of range, or
    options for a plugin that is not enabled fail naming the key and the fix.

    Example::

        @dataclass
        class RepaOptions:
            coef: float = option(0.5, ge=0)
            encoder: str = option("efficientnet_lite0", choices=("efficientnet_lite0",))

        @hookimpl
        def jit_options():
            return RepaOptions
    """


@hookspec
def jit_presets():
    """Return ``{name: factory}`` of named run presets this plugin adds (factory() -> Config).

    Presets appear in ``jit train --preset NAME``. V-Co adds ``vco-b16``, ``vco-l16``, ``vco-h16``
    and ``vco-tiny``; a preset that needs its plugin lists it in ``Config.plugins``.
    """


@hookspec
def jit_studies():
    """Return ``{name: jit_core.study.Study}`` of named studies this plugin adds (``jit study NAME``).

    A study is arms x seeds; each :class:`jit_core.study.Arm` is a preset plus overrides (and extra
    ``--plugin`` names). An ablation arm names its ``reference`` arm, the ``ingredient`` it changes
    and the config keys that may change (``changes``, patterns such as ``repa.*``); ``jit study``
    refuses an arm whose resolved config differs from its reference's in anything else. ``paper``
    gives the paper's direction for the arm against the study's ``baseline`` ("worse", "better"
    or "" for no claim), shown beside the measured verdict. V-Co adds ``vco-tiny`` (its ablations on
    the embedded data), ``vco-tiny-pair`` (JiT vs V-Co, the demo) and ``vco-b16`` (ImageNet, SLURM).
    """


@hookspec
def jit_streams(config, model_config):
    """**Stream construction.** Return a list of ``jit_core.Stream`` this plugin adds.

    Called once when the model is built (training, sampling, loading a run). Each stream gets its
    own embed, its own weights in every block, its own head and its own in-context tokens, and
    attends jointly with the pixel stream. ``Stream.target(images)`` maps the clean images
    ``(B, C, H, W)`` in [-1, 1] to the stream's clean tensor ``(B, T, channels)`` with
    T = ``model_config.grid ** 2`` (row-major; ``Stream.grid`` / ``Stream.tokens`` give a stream a token
    count of its own); it runs under ``no_grad``. ``model_config`` also
    gives ``num_classes`` (the null class is ``num_classes``) and ``image_size``; the pixel
    stream's noise scale is ``jit_core.diffusion.noise_scale_for(model_config.image_size,
    config.diffusion.noise_scale)``. Streams are ordered pixel first, then by ``--plugin`` order.
    The core records the owner in ``Stream.plugin``. Two streams with the same name are an error
    that names both plugins.

    Example::

        @hookimpl
        def jit_streams(config, model_config):
            return [Stream("edges", kind="tokens", channels=16, loss_weight=0.1, target=my_edges)]
    """


@hookspec
def jit_normalize(stream, target, config):
    """**Normalization.** Calibrate the clean target of one of *your* streams before it is noised.

    *Per stream*: called only on the plugin that added ``stream``, every training step, under
    ``no_grad``; return the tensor, or None to keep ``target``. The pixel stream is the core's
    (never normalized). V-Co standardises its feature stream per (position, channel) and
    multiplies by the RMS factor.
    """


@hookspec
def jit_null_branch(drop, streams, config):
    """**Unconditional branch.** What a dropped sample's unconditional form means for *your* streams.

    - ``drop``: ``(B,)`` bool, True where the sample is made unconditional; ``streams``: the
      model's streams in order (``stream.plugin`` names the plugin that added it).
    - Return ``jit_core.diffusion.NullBranch(blocked=..., loss_masks=..., inputs=...)`` or None:

      - ``blocked``: ``(query stream, key stream)`` name pairs that dropped samples may not attend
        across (every token, in-context tokens included, every block), e.g.
        ``[("pixel", "feature")]``: pixel queries blind to feature keys. Each pair must involve one
        of your streams, and every stream must keep at least one key stream;
      - ``loss_masks``: ``{your stream: (B,) float}`` per-sample weights of that stream's v-loss
        (1 = counted, 0 = off), e.g. ``(~drop).float()``;
      - ``inputs``: ``{your stream: tensor}`` the stream's noisy input for dropped samples is
        replaced by (broadcast to the stream's input): ``torch.zeros(())`` is input dropout; a
        parameter gets gradients (a learned null token, which the plugin must then also provide
        at sampling: ``jit_trainable_modules`` weights are not loaded by ``jit sample``).

    The null label (class ``num_classes``, see ``jit_streams``) is the core's, for every plugin.
    The core merges all plugins' answers (blocked pairs united, loss masks multiplied) into one
    ``jit_core.diffusion.Unconditional`` and uses it identically in training (``drop ~
    Bernoulli(diffusion.label_drop_prob)``) and for the unconditional half of every CFG
    evaluation (``drop`` all True). Without any answer this is JiT's label drop.
    """


@hookspec
def jit_capture_blocks(config):
    """Return block indices whose hidden states the plugin needs in ``jit_loss_terms``.

    The step then carries ``step.hidden[i][stream]`` (``(B, T, h)``, grid tokens only). REPA-style
    alignment losses use this.
    """


@hookspec
def jit_trainable_modules(config, model):
    """Return ``{name: nn.Module}`` of extra trainable modules (e.g. a REPA projector).

    They are trained with the model's optimizer, saved in checkpoints under ``aux.<name>``, and
    reachable in ``jit_loss_terms`` as ``step.aux[name]``. Not part of the sampling network.
    """


@hookspec
def jit_loss_terms(step):
    """**Loss terms.** Return ``{name: scalar tensor}`` of extra losses added to the objective.

    ``step`` is a ``jit_core.diffusion.StepState`` with: ``config``, ``model``, ``images``,
    ``labels`` (true labels), ``t``, ``drop``, ``uncond``, ``targets`` / ``noisy`` / ``preds``
    (dicts by stream; ``preds`` are x-predictions with gradients), ``hidden`` (see
    ``jit_capture_blocks``), ``aux`` (see ``jit_trainable_modules``) and ``losses`` (the
    per-stream v-losses computed so far). Terms are added as returned (apply your coefficient)
    and each is logged as ``loss/<name>``. A name used by a stream or by another plugin's term is
    an error naming both.
    """


@hookspec
def jit_batch_sampler(dataset, config, rank, world_size, seed):
    """Return a batch sampler for training, or None for the default (shuffled, sharded, drop_last).

    *One plugin*: two enabled plugins returning a sampler fail at start-up naming both. The object
    yields lists of dataset indices for this rank, has ``__len__`` (batches per epoch) and
    ``set_epoch(epoch)``; its batches must be a deterministic function of (seed, epoch, rank) so
    that a resumed run replays the same data. V-Co returns class-balanced batches (``vco.groups_per_step``
    class groups per global step, placed on the ranks; ``vco.class_balanced=false`` returns None).
    """


@hookspec
def jit_guidance_scale(stream, scale, config):
    """**Guidance per stream.** Return the CFG scale of one of *your* streams when the pixel scale is ``scale``.

    *Per stream*: called only on the plugin that added ``stream``; None (and every stream without
    an owner, the pixel stream included) gets the default: ``scale`` if ``stream.guidance``, else
    1.0. An unguided evaluation (``scale == 1``) must return 1.
    """


@hookspec
def jit_add_commands(cli):
    """Add click commands or groups to the ``jit`` CLI (``cli`` is the root ``click.Group``).

    Example: V-Co adds ``jit vco calibrate``. Called for every installed plugin, enabled or not,
    so its commands are always listed. Load a dataset inside a command with
    ``jit_core.data.build_dataset(DataConfig(name=..., path=..., image_size=...))`` (see the
    plugin guide, "Loading data in a plugin command").
    """


@hookspec
def jit_log_sinks(config, run_dir):
    """**Experiment trackers.** Return a log sink (or a list of them) that receives every record of the run.

    Called on rank 0 only, once per process that logs: at the start of training (new or resumed)
    and when ``jit evaluate`` has a result. ``run_dir`` is the run folder (a ``pathlib.Path``); keep
    a tracker's files and ids there (a resumed run continues the same tracker run). A sink has the
    methods of ``jit_core.logsinks.LogSink`` (subclass it for no-op defaults):

    - ``log_config(config)``: the resolved config as a nested dict (hyper-parameters), per start;
    - ``log_scalars(step, scalars)``: every ``metrics.jsonl`` line (``loss``, ``loss/<term>``, ``lr``,
      ``grad_norm``, ``img_per_s``, ``epoch``, ``time``); a resumed run never sends a step twice;
    - ``log_image(step, tag, image)``: every sample grid (``uint8`` numpy array ``(H, W, C)``);
    - ``log_result(record)``: every evaluation record (``jit_core.logsinks.result_scalars(record)``
      gives ``(step, {"eval/ema1-cfg2.9/fid": ...})``);
    - ``close()``: at the end of the process.

    ``metrics.jsonl`` stays the source of truth. Return None when your tracker is off (read your
    switch from your options); check that its package is importable in your options' ``check``,
    so that a missing package fails at start-up and in ``--dry-run``. A sink that raises while
    logging is reported once and dropped; the run goes on. TensorBoard (``log.tensorboard=true``) and
    W&B (``log.wandb=true``) are built in (``jit_core.trackers``).

    Example::

        class MlflowSink(LogSink):
            def __init__(self, run_dir): ...
            def log_scalars(self, step, scalars): mlflow.log_metrics(scalars, step=step)

        @hookimpl
        def jit_log_sinks(config, run_dir):
            return MlflowSink(run_dir) if plugin_options(config, MlflowOptions).enabled else None
    """
