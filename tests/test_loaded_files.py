"""Loaded files, the cases that end in the right result rather than an error (the refusals are rows of
tests/test_bad_input_table.py): float64 weights cast by the stated rule, 16-bit PNGs scaled to 8 bits, NaN before
the first checkpoint suggesting a command that works, study-element.json checked for its types."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jit_core import api
from jit_core.data import ImageFolderDataset
from jit_core.runs.checkpoint import save_checkpoint
from jit_core.study import Arm, Study, StudyError, expand
from jit_core.study.local import done_record, write_done
from jit_core.training import NonFiniteLossError

from . import fault_tools as ft
from .core.test_evaluate import make_run
from .test_bad_input import invoke


def test_float64_weights_are_cast_to_the_models_dtype(tmp_path):
    run = make_run(tmp_path / "run")
    ref = api.load_run(run).model.state_dict()
    wide = {k: v.double() for k, v in ref.items()}
    save_checkpoint(run, 7, {"model": wide, "ema1": wide, "ema2": wide}, {"step": 7})
    loaded = api.load_run(run)
    assert loaded.step == 7
    for k, v in loaded.model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ref[k])   # float32 -> float64 -> float32 is exact


def test_16_bit_grayscale_pngs_are_scaled_to_8_bits(tmp_path):
    levels = {"dark": 0, "mid": 32896, "white": 65535}      # 32896 = 128.0 * 257
    for name, value in levels.items():
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((40, 40), value, np.uint16)).save(tmp_path / name / "0.png")
    assert Image.open(tmp_path / "mid" / "0.png").mode == "I;16"
    ds = ImageFolderDataset(tmp_path, 32)
    for i, name in enumerate(ds.classes):
        image, label = ds[i]
        assert label == i and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        assert set(image.unique().tolist()) == {round(levels[name] / 257)}, name   # PIL's convert gives 255


def test_nan_before_the_first_checkpoint_suggests_a_fresh_start_that_works(tmp_path):
    import jit_core.cli as jit_cli
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        ft.train_in_process(ft.folder_config(4), run, extra_plugins=[ft.NaNPlugin({1})])
    message = str(err.value)
    assert "No checkpoint was written yet, so there is nothing to resume" in message and "--resume" not in message
    start = message.index("`jit train ") + 1
    command = message[start:message.index("`", start)]           # the suggested command, filled in
    command = command.replace("<new folder>", str(tmp_path / "new")).replace("optim.lr=<lower>", "optim.lr=1e-4")
    res = invoke(jit_cli.cli, *command.split()[1:], "train.max_steps=1")
    assert res.exit_code == 0, res.output
    assert "finished at step 1" in res.output and (tmp_path / "new" / "checkpoints" / "latest").is_file()
    # once a checkpoint exists, the advice is a resume (which works: the existing NaN tests resume it)
    with pytest.raises(NonFiniteLossError, match=r"Resume with a lower lr .* `jit train --resume "):
        ft.train_in_process(ft.folder_config(4, train__ckpt_every=1), tmp_path / "run2",
                            extra_plugins=[ft.NaNPlugin({2})])


@pytest.mark.parametrize("record, message", [
    ("[1]", "holds a list, not an object"),
    ("{", "is not valid JSON"),
    ('{"arm": "JiT", "seed": "0", "train_s": 1, "eval_s": 1, "result": null}', "'seed' is '0', expected int"),
    ('{"arm": "JiT", "seed": 0, "train_s": "fast", "eval_s": 1, "result": null}', "'train_s' is 'fast', expected"),
    ('{"arm": "JiT", "seed": 0, "train_s": 1, "eval_s": 1, "result": 5}', "'result' is 5, expected str or NoneType"),
    ('{"seed": 0, "train_s": 1, "result": null}', "'eval_s' is None, expected int or float"),
])
def test_study_element_json_is_checked_for_its_types(tmp_path, record, message):
    study = Study("s", "", (Arm("JiT", "test"),), baseline="JiT", seeds=(0,))
    (element,) = expand(study, tmp_path)
    element.run_dir.mkdir(parents=True)
    assert done_record(element) is None
    write_done(element.run_dir, {"arm": "JiT", "seed": 0, "train_s": 1.5, "eval_s": 2, "result": "r.json"})
    assert done_record(element)["train_s"] == 1.5
    write_done(element.run_dir, {"train_s": 1.5, "eval_s": 2, "num_images": 4, "result": "r.json"})   # jit slurm's
    assert done_record(element)["num_images"] == 4
    (element.run_dir / "study-element.json").write_text(record)
    with pytest.raises(StudyError, match=f"study-element.json.*{message}.*delete .* to evaluate that run again"):
        done_record(element)
    assert json.loads(json.dumps(message))     # the message is plain text
