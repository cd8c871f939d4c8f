"""A preemption's SIGTERM can kill the ``scontrol requeue`` that submitit's USR2 handler runs inside the job; the
handler then raises in whatever code was running (a plugin hook wraps it). The job finds that requeue in the
exception's chain, sends it again and waits for SLURM instead of reporting a failure."""
from __future__ import annotations

import signal
import subprocess

from jit_core.errors import PluginError
from slurm.job import _requeue_again


def _cut_short_in_a_hook() -> PluginError:
    try:
        try:
            raise subprocess.CalledProcessError(-signal.SIGTERM, ["scontrol", "requeue", "999999999"])
        except subprocess.CalledProcessError as exc:
            raise PluginError("plugin 'repa' failed in hook jit_loss_terms") from exc
    except PluginError as wrapped:
        return wrapped


def test_a_cut_short_requeue_is_found_through_the_hook_wrapper_and_sent_again():
    assert _requeue_again(_cut_short_in_a_hook())      # the second scontrol runs (a bogus id: SLURM refuses it)


def test_other_failures_are_failures():
    assert not _requeue_again(RuntimeError("boom"))
    assert not _requeue_again(subprocess.CalledProcessError(1, ["scontrol", "requeue", "1"]))   # refused, not cut
    assert not _requeue_again(subprocess.CalledProcessError(-15, ["python", "x"]))
