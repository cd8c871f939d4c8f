"""``TrainState`` is what a checkpoint holds, in the checkpoint format jit-vco has always written: a checkpoint
assembled here by hand in that format (with the Python RNG state as the text jit-vco <= 0.1 stored) resumes, and
the resumed run ends bit-identical to the uninterrupted one."""
from __future__ import annotations

import shutil

import pytest
import torch

from jit_core.runs import checkpoint as ckpt
from jit_core.training import Trainer
from jit_core.training.train_state import TrainState

from . import fault_tools as ft

# trainer.pt of a single-rank run: these keys, nothing else (rng_per_rank joins them when there are several ranks)
TRAINER_PT_KEYS = {"step", "optimizer", "elapsed", "skipped", "rng", "config", "world_size"}
K = 4


@pytest.fixture(scope="module")
def reference():
    return ft.reference_run()


def _python_rng_as_text(python: dict) -> str:
    """The Python RNG state as jit-vco <= 0.1 wrote it: ``repr(random.getstate())``."""
    return repr((python["version"], tuple(python["state"].tolist()), python["gauss"]))


def test_the_trainer_holds_one_train_state(tmp_path):
    run = tmp_path / "run"
    ft.train_in_process(ft.folder_config(K), run)
    trainer = Trainer(ft.folder_config(K + 2), run, progress=False)
    try:
        state = trainer.state
        assert isinstance(state, TrainState) and state.step == K
        assert trainer.model is state.model and trainer.optimizer is state.optimizer and trainer.emas is state.emas
        assert set(state.weights()) == set(ckpt.WEIGHT_NAMES)       # no plugin modules in this run: no aux
        saved = torch.load(ft.step_dir(run, K) / "trainer.pt", weights_only=True)
        assert set(saved) == TRAINER_PT_KEYS and saved["step"] == K and saved["world_size"] == 1
        rebuilt = state.trainer_file(trainer.config, state.ranks.rng_states())
        assert set(rebuilt) == TRAINER_PT_KEYS
    finally:
        trainer.close()


def test_a_checkpoint_written_by_hand_in_the_format_resumes_exactly(reference, tmp_path):
    run = tmp_path / "run"
    first = ft.train_in_process(ft.folder_config(K), run)
    assert (first.status, first.step) == ("finished", K)
    written = ft.step_dir(run, K)
    weights = ft.load_weights(written)
    saved = torch.load(written / "trainer.pt", weights_only=True)
    shutil.rmtree(run / "checkpoints")
    # the format, spelled out here rather than by TrainState: three weight files and trainer.pt's keys
    state = {"step": saved["step"], "optimizer": saved["optimizer"], "elapsed": saved["elapsed"],
             "skipped": saved["skipped"], "config": saved["config"], "world_size": 1,
             "rng": {**saved["rng"], "python": _python_rng_as_text(saved["rng"]["python"])}}
    ckpt.save_checkpoint(run, K, weights, state)
    trainer = Trainer(ft.folder_config(ft.REF_STEPS), run, progress=False)
    assert trainer.step == K
    with ft.single_thread():
        result = trainer.fit()
    assert (result.status, result.step) == ("finished", ft.REF_STEPS)
    same = ft.compare_weights(ft.step_dir(run, ft.REF_STEPS), ft.step_dir(reference, ft.REF_STEPS))
    assert all(same.values()), same
