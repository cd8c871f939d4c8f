"""The device a run trains on is logged; the CUDA switches leave the CPU alone; train.grad_norm=log computes the
gradient norm only on logged steps (the weights are those of the default)."""
from __future__ import annotations

import logging

import torch

from jit_core.training.devices import cuda_switches, describe_device
from tests import fault_tools as ft


def test_cuda_switches_leave_the_cpu_alone():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    config = ft.folder_config(2)
    config.train.tf32 = not before[0]
    config.train.cudnn_benchmark = not before[2]
    cuda_switches(config.train, torch.device("cpu"))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark) == before
    assert describe_device(torch.device("cpu")).startswith("cpu (")


def test_device_logged_and_grad_norm_only_on_logged_steps(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jit")
    every = ft.train_in_process(ft.folder_config(5, train__log_every=2), tmp_path / "every")
    logged = ft.train_in_process(ft.folder_config(5, train__log_every=2, train__grad_norm="log"), tmp_path / "log")
    assert "rank 0 trains on cpu (" in caplog.text
    assert (every.step, logged.step) == (5, 5)
    assert all(ft.compare_weights(ft.step_dir(tmp_path / "every", 5), ft.step_dir(tmp_path / "log", 5)).values())
    a, b = ft.read_metrics(tmp_path / "every"), ft.read_metrics(tmp_path / "log")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 5]
    # the logged norm is that of the logged step only (the default averages the steps since the last line)
    assert all("grad_norm" in r and r["grad_norm"] > 0 for r in b)
    assert b[-1]["grad_norm"] == a[-1]["grad_norm"]          # step 5 alone in both
    assert b[0]["grad_norm"] != a[0]["grad_norm"]
