"""The hook points of jit_core: the plugin author's reference (plugin API v2).

A plugin is an installed module (entry-point group ``jit_core.plugins``) with functions marked
``@jit_core.hookimpl``. Hooks come in four phases, declared with each spec below:

- **install** (module-level functions): ``jit_options``, ``jit_presets``, ``jit_studies``,
  ``jit_add_commands``, ``jit_official_layouts`` and ``jit_run_plugin``, the factory of the plugin's
  per-run object;
- **run set-up** (methods of the per-run object): ``jit_setup``, ``jit_preflight``, ``jit_streams``,
  ``jit_trainable_modules``, ``jit_capture_blocks``, ``jit_batch_sampler``, ``jit_log_sinks``;
- **per step** (training and the unconditional half of CFG): ``jit_null_branch``, ``jit_loss_terms``;
- **evaluation**: ``jit_eval_metrics`` (sampling itself asks each stream's own ``guidance_scale``, see
  :class:`jit_core.Stream`).

Every hook is called with keyword arguments; an implementation may accept any subset of them (pluggy
passes only the names it declares), so a run object's methods leave out ``config``: the object was
made for one config. With no plugin enabled a run is JiT: the core's behaviour lives in
:class:`jit_core.Stream`'s defaults and in the core itself, never in a hidden plugin.

How the core calls a hook is declared on its spec (``rule``; :func:`jit_core.hookcalls.call` is the
one dispatch path and the one error wrapper):

- *every plugin* (:data:`EACH`): each enabled plugin's implementation is called, in ``--plugin``
  order, and the results are combined (streams appended, loss terms added, branches merged, ...);
- *one plugin* (:data:`ONE`): at most one enabled plugin may answer (not None); two answers fail at
  start-up naming both plugins; no answer = the core's default.

Order of one training step, with what acts at each point::

    images, labels  <- data (batch order from jit_batch_sampler)
    targets         <- stream.normalize(stream.clean(images, step.values))   per stream, no_grad
    t, noise        <- logit-normal t shared by all streams; z_s = t x_s + (1 - t) e_s
    drop            <- Bernoulli(diffusion.label_drop_prob) per sample (the core's RNG);
                       a stream with drop_prob: its own drop, from its plugin's generator
    uncond          <- null label where dropped + every stream.null_branch(its drop) + every
                       plugin's jit_null_branch(drop, ..., training=True, generator) merged:
                       blocked (query, key) stream pairs, loss masks, null inputs
    x_hat, hidden   <- model(uncond.inputs(z), t, uncond.labels, uncond.blocked, capture=jit_capture_blocks())
    loss            <- sum_s w_s * v_loss_s(masked) + sum(jit_loss_terms(step, generator).values())

Sampling forms the unconditional half of the batched CFG forward from the same merged branch with
every sample dropped (``training=False``), and asks each stream's ``guidance_scale`` for its scale.

**Randomness.** The only RNG a plugin may use in a step is the ``generator`` the core hands it
(``jit_null_branch``, ``jit_loss_terms``): a ``torch.Generator`` seeded from (run seed, global step,
plugin name, rank), one per plugin per step, so a resumed run draws exactly what an uninterrupted one
draws. ``jit_setup`` runs under a forked, seeded global RNG (:func:`jit_core.rng.isolated_rng`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pluggy

PROJECT = "jit_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

EACH = "every plugin"
ONE = "one plugin"
PHASES = ("install", "run set-up", "per step", "evaluation")


def spec(rule: str, phase: str):
    """A hook spec with its calling rule (:data:`EACH` or :data:`ONE`) and phase (:data:`PHASES`) declared on it."""
    if rule not in (EACH, ONE) or phase not in PHASES:
        raise ValueError(f"spec({rule!r}, {phase!r}): rule is EACH or ONE, phase one of {PHASES}")

    def mark(fn):
        fn.jit_rule, fn.jit_phase = rule, phase
        return hookspec(fn)
    return mark


def rule_of(name: str) -> str:
    """How the core calls the hook ``name`` (:data:`EACH` or :data:`ONE`)."""
    return globals()[name].jit_rule


def phase_of(name: str) -> str:
    return globals()[name].jit_phase


@dataclass(frozen=True)
class RunContext:
    """What a plugin's ``jit_setup`` may read about the run being set up."""

    config: Any                          # the resolved, checked run config
    model_config: Any = None             # the network's config (grid, hidden_size, depth, num_classes, ...)
    device: Any = "cpu"                  # the torch.device this rank trains or samples on
    dataset: Any = None                  # the training dataset (None outside training)
    run_dir: Optional[Path] = None       # the run folder (None: no folder, e.g. a notebook model)
    rank: int = 0
    world_size: int = 1
    training: bool = False               # True when the run trains (a dry run included), False to sample
    dry_run: bool = False                # jit train --dry-run: check what you can, build no weights, write nothing


# =================================================================================== install
@spec(EACH, "install")
def jit_options() -> Optional[type]:
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


@spec(EACH, "install")
def jit_presets() -> Optional[dict[str, Any]]:
    """Return ``{name: factory}`` of named run presets this plugin adds (factory() -> Config).

    Presets appear in ``jit train --preset NAME``. V-Co adds ``vco-b16``, ``vco-l16``, ``vco-h16``
    and ``vco-tiny``; a preset that needs its plugin lists it in ``Config.plugins``.
    """


@spec(EACH, "install")
def jit_studies() -> Optional[dict[str, Any]]:
    """Return ``{name: jit_core.study.Study}`` of named studies this plugin adds (``jit study NAME``).

    A study is arms x seeds; each :class:`jit_core.study.Arm` is a preset plus overrides (and extra
    ``--plugin`` names). An ablation arm names its ``reference`` arm, the ``ingredient`` it changes
    and the config keys that may change (``changes``, patterns such as ``repa.*``); ``jit study``
    refuses an arm whose resolved config differs from its reference's in anything else. ``paper``
    gives the paper's direction for the arm against the study's ``baseline`` ("worse", "better"
    or "" for no claim), shown beside the measured verdict. V-Co adds ``vco-tiny`` (its ablations on
    the embedded data), ``vco-tiny-pair`` (JiT vs V-Co, the demo) and ``vco-b16`` (ImageNet, SLURM).
    """


@spec(EACH, "install")
def jit_add_commands(cli: Any) -> None:
    """Add click commands or groups to the ``jit`` CLI (``cli`` is the root ``click.Group``).

    Example: V-Co adds ``jit vco calibrate``. Called for every installed plugin, enabled or not,
    so its commands are always listed. Load a dataset inside a command with
    ``jit_core.data.build_dataset(DataConfig(name=..., path=..., image_size=...))`` (see the
    plugin guide, "Loading data in a plugin command").
    """


@spec(EACH, "install")
def jit_official_layouts() -> Optional[list]:
    """Return the official checkpoint layouts (``jit_core.official.layout.OfficialLayout``) of the code base
    this plugin re-implements, so that ``jit convert`` imports its ``.pth`` checkpoints and exports write them.

    A layout detects its official keys, maps each official key to ours (None: not part of the network, e.g. a
    frozen encoder) and each of ours back, says which networks it writes (e.g. those with your stream) and
    which plugins a converted run enables (and, through ``plugin_options``, which of their options rebuild the
    network). A layout whose mapping depends on the whole key set gives ``bind`` (keys -> the layout bound to
    them). Asked of every installed plugin, enabled or not. V-Co adds the official V-Co layout (its
    architecture variants included).
    """


@spec(EACH, "install")
def jit_run_plugin(config: Any) -> Optional[object]:
    """**The per-run object.** Return this plugin's object for the run ``config`` describes, or None.

    Install-time (a module-level function): called once per run, after the options are checked, with the
    resolved config. The core registers the returned object for that run like a plugin module, so its
    methods marked ``@hookimpl`` answer the per-run hooks (``jit_setup``, ``jit_streams``,
    ``jit_null_branch``, ``jit_loss_terms``, ...) for this plugin. The object owns everything the run
    needs (its typed options, encoders, statistics, caches): nothing run-specific lives in module
    globals, so two runs in one process (a notebook, a test session, study lanes) never share state.
    Return None when the config leaves the plugin with nothing to do.

    Example::

        class EdgesRun:
            def __init__(self, config):
                self.opts = plugin_options(config, EdgesOptions)

            @hookimpl
            def jit_streams(self, model_config):
                return [Stream("edges", channels=2, target=self.edges)]

        @hookimpl
        def jit_run_plugin(config):
            return EdgesRun(config)
    """


# =================================================================================== run set-up
@spec(EACH, "run set-up")
def jit_setup(run: RunContext) -> None:
    """**Set-up.** Prepare the run once, at start-up: build frozen encoders, load or compute statistics,
    open caches, check files. ``run`` is a :class:`RunContext`.

    Called before the network is built, on every rank: when training starts or resumes (after the run
    folder is locked), in ``jit train --dry-run`` (``run.dry_run``: check what you can without building
    weights and write nothing) and when a run is loaded to sample (``run.training`` False). The core
    runs it with the global RNGs forked and seeded by ``train.seed`` (:func:`jit_core.rng.isolated_rng`),
    so whatever it draws (a module's random init, a random subset) never shifts the training
    randomness: a resumed run stays bit-identical to an uninterrupted one. Do expensive work here, not
    lazily in a step hook.
    """


@spec(EACH, "run set-up")
def jit_preflight(config: Any) -> Optional[list[str]]:
    """**Pre-flight checks.** Return what would make this run fail once started, one line each (None or [] = fine).

    Cheap and read-only: look for files, check that weights can be found, never build or load them. ``jit
    train --dry-run`` fails on any problem, and ``jit slurm submit`` refuses the run before anything is queued
    (it checks on the submitting machine, which sees the run's files as the nodes do). V-Co reports an
    encoder whose weights cannot be found offline, or a token grid the encoder does not fit.
    """


@spec(EACH, "run set-up")
def jit_streams(config: Any, model_config: Any) -> Optional[list]:
    """**Stream construction.** Return a list of ``jit_core.Stream`` this plugin adds.

    Called once when the model is built (training, sampling, loading a run). Each stream gets its
    own embed, its own weights in every block, its own head and its own in-context tokens, and
    attends jointly with the pixel stream. A stream carries its behaviour (override in a subclass of
    ``jit_core.Stream``; the base class is JiT's): ``clean(images, values)`` maps the clean images
    ``(B, C, H, W)`` in [-1, 1] to the stream's clean tensor ``(B, T, channels)`` (default: the
    ``target`` function), under ``no_grad``; ``normalize(clean)`` calibrates it before noising;
    ``guidance_scale(scale)`` is its CFG scale; ``null_branch(drop, streams, training)`` is its
    unconditional form, for its own drop if it declares ``drop_prob``. T = ``model_config.grid ** 2``
    (row-major) unless the stream declares its own ``grid`` or a number of global ``tokens``.
    ``model_config`` also gives ``num_classes`` (the null class is ``num_classes``) and ``image_size``;
    the pixel stream's noise scale is ``jit_core.diffusion.noise_scale_for(model_config.image_size,
    config.diffusion.noise_scale)``. Streams are ordered pixel first, then by ``--plugin`` order.
    The core records the owner in ``Stream.plugin``. Two streams with the same name are an error
    that names both plugins.

    Example::

        @hookimpl
        def jit_streams(self, model_config):
            return [Stream("edges", kind="tokens", channels=16, loss_weight=0.1, target=self.edges)]
    """


@spec(EACH, "run set-up")
def jit_trainable_modules(config: Any, model: Any) -> Optional[dict[str, Any]]:
    """Return ``{name: nn.Module}`` of extra trainable modules (e.g. a REPA projector).

    They are trained with the model's optimizer, saved in checkpoints under ``aux.<name>``, and
    reachable in ``jit_loss_terms`` as ``step.aux[name]``. Not part of the sampling network.
    Called once when training builds its modules (set-up work belongs in ``jit_setup``).
    """


@spec(EACH, "run set-up")
def jit_capture_blocks(config: Any) -> Optional[list[int]]:
    """Return block indices whose hidden states the plugin needs in ``jit_loss_terms``.

    The step then carries ``step.hidden[i][stream]`` (``(B, T, h)``, grid tokens only). REPA-style
    alignment losses use this.
    """


@spec(ONE, "run set-up")
def jit_batch_sampler(dataset: Any, config: Any, rank: int, world_size: int, seed: int) -> Optional[Any]:
    """Return a batch sampler for training, or None for the default (shuffled, sharded, drop_last).

    *One plugin*: two enabled plugins returning a sampler fail at start-up naming both. The object
    yields lists of dataset indices for this rank, has ``__len__`` (batches per epoch) and
    ``set_epoch(epoch)``; its batches must be a deterministic function of (seed, epoch, rank) so
    that a resumed run replays the same data. V-Co returns class-balanced batches (``vco.groups_per_step``
    class groups per global step, placed on the ranks; ``vco.class_balanced=false`` returns None).
    """


@spec(EACH, "run set-up")
def jit_log_sinks(config: Any, run_dir: Path) -> Any:
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


# =================================================================================== per step
@spec(EACH, "per step")
def jit_null_branch(drop: Any, streams: list, config: Any, training: bool, generator: Any) -> Optional[Any]:
    """**Unconditional branch.** What a dropped sample's unconditional form means for *your* streams.

    A stream can answer for itself (``Stream.null_branch``, with its own ``drop_prob``); this hook is
    the plugin-level route, for a form that concerns several of your streams at once.

    - ``drop``: ``(B,)`` bool, True where the sample is made unconditional (the shared label drop);
      ``streams``: the model's streams in order (``stream.plugin`` names the plugin that added it);
      ``training``: True in a training step, False for the unconditional half of CFG (``drop`` all
      True); ``generator``: your seeded generator of this step (the only RNG you may draw from).
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
    The core merges all answers (blocked pairs united, loss masks multiplied) into one
    ``jit_core.diffusion.Unconditional`` and uses it identically in training (``drop ~
    Bernoulli(diffusion.label_drop_prob)``) and for the unconditional half of every CFG
    evaluation (``drop`` all True). Without any answer this is JiT's label drop.
    """


@spec(EACH, "per step")
def jit_loss_terms(step: Any, generator: Any) -> Optional[dict[str, Any]]:
    """**Loss terms.** Return ``{name: scalar tensor}`` of extra losses added to the objective.

    ``step`` is a ``jit_core.diffusion.StepState`` with: ``config``, ``model``, ``images``,
    ``labels`` (true labels), ``t``, ``drop``, ``uncond``, ``targets`` / ``noisy`` / ``preds``
    (dicts by stream; ``preds`` are x-predictions with gradients), ``hidden`` (see
    ``jit_capture_blocks``), ``aux`` (see ``jit_trainable_modules``), ``losses`` (the per-stream
    v-losses computed so far), ``values`` (what streams' ``clean`` left for this step, e.g. V-Co's
    f+), ``global_step``, ``rank`` and ``training``. ``generator`` is your seeded generator of this
    step (the same one ``jit_null_branch`` drew from). Terms are added as returned (apply your
    coefficient) and each is logged as ``loss/<name>``. A name used by a stream or by another
    plugin's term is an error naming both.
    """


# =================================================================================== evaluation
@spec(EACH, "evaluation")
def jit_eval_metrics(images: Any, labels: Any, config: Any) -> Optional[dict[str, float]]:
    """**Evaluation metrics.** Return ``{name: float}`` of this plugin's metrics of one set of samples.

    Called by ``jit evaluate`` on rank 0 for every evaluated set (each CFG scale and EMA of a grid), with the
    generated ``images`` (uint8 ``(N, C, H, W)``, the evaluation protocol's quantisation) and their class
    ``labels`` ``(N,)``. The values are added to the result's ``metrics`` beside the core's (FID, IS, the
    classifier metric), written to the result JSON and sent to the trackers. Name them after your plugin
    (``"lowpass/energy"``); a name the core or another plugin already uses is an error naming both.
    """
