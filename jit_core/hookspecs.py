"""The hook points of jit_core: the plugin author's reference.

A plugin is a module or object with functions marked ``@jit_core.hookimpl`` whose names are
the hooks below. Every hook is called with keyword arguments; an implementation may accept any
subset of them (pluggy passes only the names it declares). The core implements the JiT defaults
itself (``jit_core.plugins.defaults``, registered ``trylast``), so with no plugin enabled a run is JiT.

Order of one training step, with the hook that acts at each point::

    images, labels  <- data (batch order from jit_batch_sampler)
    targets         <- each stream's target(images)        (streams from jit_streams)
    targets         <- jit_normalize(stream, target)       per stream, before noising
    t, noise        <- logit-normal t shared by all streams; z_s = t x_s + (1 - t) e_s
    uncond          <- jit_unconditional(labels, drop)     null labels, attention block matrix, loss masks
    x_hat, hidden   <- model(z, t, uncond.labels, uncond.blocked, capture=jit_capture_blocks())
    loss            <- sum_s w_s * v_loss_s(masked) + sum(jit_loss_terms(step).values())

Sampling calls ``jit_unconditional`` with every sample dropped to form the unconditional half of
the batched CFG forward, and ``jit_guidance_scale`` for each stream's scale.
"""
from __future__ import annotations

import pluggy

PROJECT = "jit_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def jit_options():
    """Declare this plugin's options: return a dataclass *type* (or None).

    The options live in the config under the plugin's name (``vco.drift_coef=5`` on the command
    line, ``[vco]`` in a config file, ``plugin_options["vco"]`` in Python). Fields are typed; an
    unknown or ill-typed option fails at start-up naming the plugin and the nearest valid option.
    Read them with ``jit_core.config.plugin_options(config, "vco", VCoOptions)``.

    Example::

        @dataclass
        class RepaOptions:
            coef: float = 0.5
            block: int = 4

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
def jit_streams(config, model_config):
    """**Stream construction.** Return a list of ``jit_core.model.streams.Stream`` this plugin adds.

    Called once when the model is built (training, sampling, loading a run). Each stream gets its
    own embed, its own weights in every block, its own head and its own in-context tokens, and
    attends jointly with the pixel stream. ``Stream.target(images)`` maps the clean images
    ``(B, C, H, W)`` in [-1, 1] to the stream's clean tensor ``(B, T, channels)`` with
    T = ``model_config.grid ** 2`` (row-major); it runs under ``no_grad``. Two streams with the
    same name are an error that names both plugins.

    Example::

        @hookimpl
        def jit_streams(config, model_config):
            return [Stream("edges", kind="tokens", channels=16, loss_weight=0.1, target=my_edges)]
    """


@hookspec(firstresult=True)
def jit_normalize(stream, target, config):
    """**Normalization.** Calibrate a stream's clean target before it is noised; return the tensor.

    firstresult: the first plugin returning a tensor wins; the core default returns ``target``
    unchanged. Called every training step for every stream (pixels included), under ``no_grad``.
    V-Co standardises its feature stream per (channel, position) and multiplies by the RMS factor.
    """


@hookspec(firstresult=True)
def jit_unconditional(labels, drop, streams, config):
    """**Unconditional branch.** Turn the dropped samples of a batch into their unconditional form.

    - ``labels``: ``(B,)`` true labels; ``drop``: ``(B,)`` bool, True where the sample is made
      unconditional; ``streams``: the model's streams in order.
    - Return ``jit_core.diffusion.Unconditional(labels, blocked, loss_masks)``: the labels the
      model sees (null class ``config`` ``num_classes`` where dropped), an optional ``(B, S, S)``
      bool matrix, True where queries of stream i may not attend to keys of stream j (applied to
      every token, in-context tokens included, in every block: the ``exact`` attention path adds a
      -inf token mask, the ``fast`` path attends per block pattern without one; every stream must
      see at least one key stream), and per-stream ``(B,)`` float loss masks (1 = counted).

    Called in training with ``drop ~ Bernoulli(config.diffusion.label_drop_prob)`` and, identically,
    for the unconditional half of every CFG evaluation with ``drop`` all True. firstresult; the
    core default is JiT's label drop (null label, no mask, all losses kept).
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
    and each is logged as ``loss/<name>``. Names must not clash with stream names.
    """


@hookspec(firstresult=True)
def jit_batch_sampler(dataset, config, rank, world_size, seed):
    """Return a batch sampler for training, or None for the default (shuffled, sharded, drop_last).

    The object yields lists of dataset indices for this rank, has ``__len__`` (batches per epoch)
    and ``set_epoch(epoch)``; its batches must be a deterministic function of (seed, epoch, rank)
    so that a resumed run replays the same data. V-Co returns class-balanced batches (one class
    per rank batch).
    """


@hookspec(firstresult=True)
def jit_guidance_scale(stream, scale, config):
    """**Guidance per stream.** Return the CFG scale for ``stream`` when the pixel scale is ``scale``.

    firstresult; the default is ``scale`` for every stream with ``stream.guidance`` and 1.0 for the
    others. An unguided evaluation (``scale == 1``) must return 1 for every stream.
    """


@hookspec
def jit_add_commands(cli):
    """Add click commands or groups to the ``jit`` CLI (``cli`` is the root ``click.Group``).

    Example: V-Co adds ``jit vco calibrate``. Called for every installed plugin, enabled or not,
    so its commands are always listed.
    """
