"""Faults during training, on real processes and real files: kill -9 (also in the middle of a checkpoint
write), a damaged newest checkpoint, SIGTERM (a `jit train` subprocess) and SIGUSR1/SIGUSR2 (in-process), and a
loss that turns NaN.

Every run here is the 20-step folder run of :mod:`tests.fault_tools` (10 steps per epoch, checkpoints
every 2 steps); the uninterrupted reference is trained once per process, in-process, with one thread,
and the ``jit train`` subprocesses run with OMP_NUM_THREADS=1, so their weights can be compared bit for bit.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core.runs import checkpoint as ckpt
from jit_core.training import NonFiniteLossError, Trainer

from . import fault_tools as ft

N = ft.REF_STEPS


@pytest.fixture(scope="module")
def reference():
    return ft.reference_run()


def _resumes_mid_epoch(steps) -> bool:
    return any(s % ft.STEPS_PER_EPOCH for s in steps)


def _metric_lines(run) -> int:
    path = run / "metrics.jsonl"
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _step_seconds(rows) -> float:
    """Median training seconds per step from consecutive metrics rows of one process (``time`` is cumulative)."""
    diffs = sorted(b["time"] - a["time"] for a, b in itertools.pairwise(rows) if b["step"] == a["step"] + 1)
    return diffs[len(diffs) // 2] if diffs else 0.3


def _tmp_dirs(run, pid=None):
    root = run / "checkpoints"
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [n for n in names if ".tmp-" in n and (pid is None or n.endswith(f".tmp-{pid}"))]


# ----------------------------------------------------------------------------------- kill -9 loop
N_KILLS = 5            # kills at seeded random moments; at least one of them during a checkpoint write
MAX_EXTRA_KILLS = 3    # extra tries if the write-time kill keeps landing after the write finished


@pytest.fixture(scope="module")
def kill_loop(reference, tmp_path_factory):
    """``jit train`` (20 steps, a checkpoint every 2) is SIGKILLed again and again and restarted with the same
    command until it finishes. Each life is killed once it made progress (a checkpoint newer than the one
    it resumed from, and a random number of further steps), at a random fraction of a step (seeded); one
    life is killed the moment a ``step-*.tmp-<pid>`` checkpoint directory appears."""
    root = tmp_path_factory.mktemp("kill9")
    run = root / "run"
    cmd = ft.jit_cmd("train", "--preset", "test", "--run-dir", str(run), *ft.folder_overrides(N, train__log_every=1))
    env = ft.subprocess_env()
    rng = random.Random(20251126)
    fig = {"kills": 0, "kills_during_checkpoint_write": 0, "write_kill_misses": 0, "launches": 0, "resumes": 0,
           "resume_steps": [], "kills_detail": [], "corrupt_after_kill": 0}
    started = time.monotonic()
    rc, output = None, ""
    while True:
        assert fig["launches"] < N_KILLS + MAX_EXTRA_KILLS + 2, fig
        fig["launches"] += 1
        start = ft.latest_step(run) or 0
        seen = _metric_lines(run)
        log_path = root / f"life-{fig['launches']}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        want_kill = fig["kills"] < N_KILLS or (fig["kills_during_checkpoint_write"] == 0
                                               and fig["kills"] < N_KILLS + MAX_EXTRA_KILLS)
        mode = None
        if want_kill:
            mode = "write" if fig["kills"] >= 1 and fig["kills_during_checkpoint_write"] == 0 else "random"
            if mode == "write":
                ft.wait_for(lambda pid=proc.pid: _tmp_dirs(run, pid), timeout=300, interval=0.0005, proc=proc)
            else:
                extra = rng.randint(0, 1)

                def progressed(seen=seen, start=start, extra=extra):
                    rows = ft.read_metrics(run, tolerant=True)[seen:]
                    return (ft.latest_step(run) or 0) > start and len(rows) >= 2 + extra
                ft.wait_for(progressed, timeout=300, proc=proc)
                time.sleep(rng.random() * _step_seconds(ft.read_metrics(run, tolerant=True)[seen:]))
        if mode and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            tmp_left = _tmp_dirs(run, proc.pid)
            rows = ft.read_metrics(run, tolerant=True)[seen:]
            fig["kills"] += 1
            in_write = bool(tmp_left)
            fig["kills_during_checkpoint_write"] += in_write
            fig["write_kill_misses"] += mode == "write" and not in_write
            fig["kills_detail"].append({"life": fig["launches"], "mode": mode, "resumed_from": start,
                                        "last_logged_step": rows[-1]["step"] if rows else None,
                                        "during_write": tmp_left, "latest_after": ft.latest_step(run)})
            # the crash left the newest complete checkpoint valid: no fallback, no warning
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                newest = ckpt.latest_checkpoint(run)
            fig["corrupt_after_kill"] += bool([w for w in caught if "skipping checkpoint" in str(w.message)])
            assert newest is not None and newest.is_dir(), fig["kills_detail"][-1]
            continue
        rc = proc.wait(timeout=600)
        output = log_path.read_text()
        break
    for i in range(2, fig["launches"] + 1):
        found = re.findall(r"resumed from \S+ \(step (\d+)\)", (root / f"life-{i}.log").read_text())
        fig["resumes"] += bool(found)
        fig["resume_steps"] += [int(s) for s in found]
    final = ft.step_dir(run, N)
    same = ft.compare_weights(ft.step_dir(reference, N), final) if final.is_dir() else {}
    fig.update(rc=rc, final_step=ft.latest_step(run), final_weights_identical=same,
               final_equal=bool(same) and all(same.values()),
               max_abs_diff=ft.max_abs_diff(ft.step_dir(reference, N), final) if final.is_dir() else None,
               leftovers=[n for n in os.listdir(run / "checkpoints") if re.search(r"\.(tmp|old|del)-\d+$", n)],
               wall_seconds=round(time.monotonic() - started, 1))
    (root / "kill9_figures.json").write_text(json.dumps(fig, indent=1, default=str))
    fig["figures_file"] = str(root / "kill9_figures.json")
    fig["last_output"] = output
    return fig


def _report(capsys, title: str, fig: dict) -> None:
    shown = {k: v for k, v in fig.items() if k not in ("last_output", "kills_detail")}
    with capsys.disabled():
        print(f"\n[{title}] " + json.dumps(shown, default=str))
        for k in fig.get("kills_detail", []):
            print(f"[{title}]   kill {k}")


def fig_run(fig) -> Path:
    return Path(fig["figures_file"]).parent / "run"


def test_kill9_loop_recovers_every_time(kill_loop, capsys):
    fig = kill_loop
    _report(capsys, "kill -9 loop", fig)
    assert fig["rc"] == 0 and f"finished at step {N}" in fig["last_output"], fig["last_output"][-3000:]
    assert fig["kills"] >= N_KILLS
    assert fig["kills_during_checkpoint_write"] >= 1, fig["kills_detail"]
    assert fig["resumes"] == fig["launches"] - 1 == fig["kills"]      # every restart resumed from a checkpoint
    assert fig["corrupt_after_kill"] == 0                             # no kill ever damaged a checkpoint
    assert fig["final_step"] == N and fig["leftovers"] == []
    ckpt.verify_checkpoint(ft.step_dir(fig_run(fig), N))
    # every resume rolled metrics.jsonl back to its checkpoint: one line per step, as an uninterrupted run
    assert [m["step"] for m in ft.read_metrics(fig_run(fig))] == list(range(1, N + 1))
    assert _resumes_mid_epoch(fig["resume_steps"]), fig["resume_steps"]   # by design: checkpoints every 2 steps


def test_kill9_loop_final_weights_identical(kill_loop):
    fig = kill_loop
    if not _resumes_mid_epoch(fig["resume_steps"]):
        pytest.skip(f"every resume was on an epoch boundary ({fig['resume_steps']})")
    assert fig["final_weights_identical"] == {"model": True, "ema1": True, "ema2": True}, fig["max_abs_diff"]


# ----------------------------------------------------------------------------------- damaged newest checkpoint
@pytest.fixture(scope="module")
def twelve_steps(tmp_path_factory):
    """A run stopped at step 12, keeping every even checkpoint (keep_every=2): 2, 4, ..., 12."""
    run = tmp_path_factory.mktemp("damaged") / "run12"
    result = ft.train_in_process(ft.folder_config(12, train__keep_every=2), run)
    assert result.step == 12
    return run


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,fname", [(_truncate, "model.safetensors"), (_flip_byte, "ema2.safetensors")],
                         ids=["truncated-model", "bitflip-ema2"])
def test_damaged_newest_checkpoint_falls_back(reference, twelve_steps, tmp_path, damage, fname):
    """The newest checkpoint (12) is damaged: the resumed run warns naming the bad file, resumes from the
    previous one (10, an epoch boundary), and finishes bit-identical to the uninterrupted run."""
    run = ft.copy_run(twelve_steps, tmp_path / "run")
    bad = ft.step_dir(run, 12) / fname
    damage(bad)
    with pytest.warns(UserWarning) as caught:
        trainer = Trainer(ft.folder_config(N, train__keep_every=2), run, progress=False)
    messages = [str(w.message) for w in caught if "skipping checkpoint" in str(w.message)]
    assert messages and all(str(bad) in m and "step-00000012" in m for m in messages), messages
    assert trainer.step == 10 and trainer.last_checkpoint == ft.step_dir(run, 10)
    with ft.single_thread():
        result = trainer.fit()
    assert (result.status, result.step) == ("finished", N)
    ckpt.verify_checkpoint(ft.step_dir(run, 12))                  # step 12 was written again, cleanly
    same = ft.compare_weights(ft.step_dir(reference, N), ft.step_dir(run, N))
    assert same == {"model": True, "ema1": True, "ema2": True}


def test_every_checkpoint_damaged_refuses_to_start_over(twelve_steps, tmp_path):
    """No checkpoint verifies: `jit train --resume` stops with one line instead of silently restarting."""
    run = ft.copy_run(twelve_steps, tmp_path / "run")
    for d in ckpt.list_checkpoints(run):
        _truncate(d / "trainer.pt")
    before, config = ft.tree_snapshot(run), json.loads((run / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(jit_cli.cli, ["train", "--resume", str(run)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: none of the 6 checkpoints") and "verifies" in last, res.output
    assert ft.tree_snapshot(run) == before                       # checked at start-up: not even config.json rewritten
    assert json.loads((run / "config.json").read_text()) == config


# ----------------------------------------------------------------------------------- SIGTERM / SIGUSR1 / SIGUSR2
@pytest.fixture(scope="module")
def sigterm_run(reference, tmp_path_factory):
    """`jit train` (a subprocess) gets SIGTERM after its 3rd step; then the run is resumed in-process with
    `jit train --resume RUN` (CliRunner) to the end."""
    root = tmp_path_factory.mktemp("sigterm")
    run = root / "run"
    cmd = ft.jit_cmd("train", "--preset", "test", "--run-dir", str(run),
                     *ft.folder_overrides(N, train__log_every=1, train__ckpt_every=1000))
    with open(root / "jit.log", "w+") as log:
        proc = subprocess.Popen(cmd, env=ft.subprocess_env(), stdout=log, stderr=subprocess.STDOUT, cwd=root)
        return ft.stop_after_step_3_then_resume(proc, log, run, lambda p: p.send_signal(signal.SIGTERM))


def test_sigterm_checkpoints_and_exits_0(sigterm_run):
    r = sigterm_run
    assert r["reached"], "the run never reached step 3"
    assert r["rc"] == 0, r["output"][-3000:]
    assert "received SIGTERM: finishing the step, writing a checkpoint, exiting" in r["output"]
    s = r["stopped_at"]
    assert s is not None and 3 <= s < N, r["output"][-2000:]
    assert "Traceback" not in r["output"]
    assert r["checkpoints"] == [ft.step_dir(r["run"], s)]     # ckpt_every=1000: only the signal's
    assert [m["step"] for m in ft.read_metrics(r["run"])][:s] == list(range(1, s + 1))
    res = r["resume"]
    assert res.exit_code == 0, res.output[-3000:]
    assert f"finished at step {N}" in res.output
    ckpt.verify_checkpoint(ft.step_dir(r["run"], N))


def test_sigterm_resume_is_bit_identical(reference, sigterm_run):
    same = ft.compare_weights(ft.step_dir(reference, N), ft.step_dir(sigterm_run["run"], N))
    assert same == {"model": True, "ema1": True, "ema2": True}


@pytest.fixture(scope="module", params=[signal.SIGUSR1, signal.SIGUSR2], ids=["SIGUSR1", "SIGUSR2"])
def usr_signal_run(request, reference, tmp_path_factory):
    """In-process: the signal arrives during step 3 (sent by a plugin hook); then the run is resumed to 20."""
    sig = request.param
    run = tmp_path_factory.mktemp(sig.name) / "run"
    cfg = ft.folder_config(N, train__ckpt_every=1000)
    before = signal.getsignal(sig)
    with ft.single_thread():
        first = Trainer(cfg, run, progress=False, extra_plugins=[ft.SignalPlugin(sig, at=3)]).fit()
        after_signal = ckpt.list_checkpoints(run)
        second = ft.train_in_process(ft.folder_config(N, train__ckpt_every=1000), run)
    return {"sig": sig, "run": run, "first": first, "second": second, "after_signal": after_signal,
            "handler_restored": signal.getsignal(sig) == before}


def test_usr_signal_checkpoints_and_stops(usr_signal_run):
    r = usr_signal_run
    assert (r["first"].status, r["first"].step) == ("interrupted", 3)
    assert r["first"].checkpoint == ft.step_dir(r["run"], 3) and r["after_signal"] == [ft.step_dir(r["run"], 3)]
    assert r["handler_restored"]                         # fit() puts the previous handler back
    assert (r["second"].status, r["second"].step) == ("finished", N)


def test_usr_signal_resume_is_bit_identical(reference, usr_signal_run):
    same = ft.compare_weights(ft.step_dir(reference, N), ft.step_dir(usr_signal_run["run"], N))
    assert same == {"model": True, "ema1": True, "ema2": True}


# ----------------------------------------------------------------------------------- NaN
def _finite_checkpoint(path) -> dict:
    ckpt.verify_checkpoint(path)
    weights, state = ckpt.load_checkpoint(path)
    for name in ("model", "ema1", "ema2"):
        assert all(torch.isfinite(t).all() for t in weights[name].values()), name
    for s in state["optimizer"]["state"].values():
        assert all(torch.isfinite(t).all() for t in s.values() if isinstance(t, torch.Tensor))
    return state


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    run = tmp_path / "run"
    plugin = ft.NaNPlugin({5})
    with pytest.raises(NonFiniteLossError) as err:
        ft.train_in_process(ft.folder_config(8), run, extra_plugins=[plugin])
    msg = str(err.value)
    assert "non-finite values at step 5" in msg and "loss/boom=nan" in msg, msg
    assert f"last good checkpoint: {ft.step_dir(run, 4)}" in msg, msg
    assert "train.nan_policy=skip" in msg and f"jit train --resume {run}" in msg and "--allow-change optim.lr" in msg
    assert plugin.calls == 5
    assert ckpt.list_checkpoints(run) == [ft.step_dir(run, 4)] and ft.latest_step(run) == 4
    state = _finite_checkpoint(ft.step_dir(run, 4))
    assert state["step"] == 4 and state["skipped"] == 0
    assert [m["step"] for m in ft.read_metrics(run)] == [2, 4]


def test_nan_policy_skip_counts_and_continues(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="jit"):
        result = ft.train_in_process(ft.folder_config(6, train__nan_policy="skip", train__max_skipped_steps=2),
                                     run, extra_plugins=[ft.NaNPlugin({3, 4})])
    assert (result.status, result.step) == ("finished", 6)
    skips = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(skips) == 2 and "(1/2)" in skips[0] and "(2/2)" in skips[1] and "loss/boom=nan" in skips[0], skips
    state = _finite_checkpoint(ft.step_dir(run, 6))
    assert state["skipped"] == 2 and state["step"] == 6
    rows = ft.read_metrics(run)
    # steps 3 and 4 were skipped: nothing to average at step 4, the step-6 row averages steps 5 and 6
    assert [r["step"] for r in rows] == [2, 6] and all(r["loss"] == r["loss"] for r in rows)   # no NaN logged


def test_nan_policy_skip_stops_past_the_limit(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        ft.train_in_process(ft.folder_config(8, train__nan_policy="skip", train__max_skipped_steps=2),
                            run, extra_plugins=[ft.NaNPlugin(lambda s: s >= 3)])
    msg = str(err.value)
    assert "non-finite values at step 5" in msg and "loss/boom=nan" in msg, msg
    assert f"last good checkpoint: {ft.step_dir(run, 4)}" in msg, msg
    state = _finite_checkpoint(ft.step_dir(run, 4))
    assert state["skipped"] == 2
