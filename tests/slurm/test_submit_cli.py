"""`jit slurm submit|status|logs` through the CLI (click's CliRunner), against the real local SLURM
cluster where a job runs; dry runs and input errors need no cluster."""
from __future__ import annotations

import json
import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from jit_core.cli import _add_optional_commands, cli
from slurm.outcome import wait_for_end
from slurm.records import read_jobs
from slurm.watch import slurm_job_info

from .test_launcher import TINY, wait_for

pytestmark = pytest.mark.timeout(300)

CPU = ["--cpus-per-task", "1", "--time", "10"]   # no --mem-per-task: the default from the estimate


class _Trap:
    """Unpickling this writes a marker file: proof that something loaded a pickle it should not have."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("unpickled",))


def jit(*args: str, env=None):
    _add_optional_commands()
    return CliRunner().invoke(cli, ["slurm", *args], env=env, catch_exceptions=False)


# ---------------------------------------------------------------------------------------------- cluster
@pytest.mark.slurm
def test_submit_wait_status_logs(slurm_cluster, run_dir):
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), *CPU, "--wait", "train.max_steps=4", *TINY)
    assert res.exit_code == 0, res.output
    job_id = re.search(r"submitted job (\d+) \(slurm, 1 node x 1 task\)", res.output)[1]
    assert f"{run_dir}: finished at step 4: loss=" in res.output
    assert (run_dir / "checkpoints" / "step-00000004" / "model.safetensors").exists()
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    record = read_jobs(run_dir)[-1]
    assert record["job_id"] == job_id and record["executor"] == "slurm" and record["tasks"] == 1
    assert record["log_dir"] == str(run_dir / "slurm" / "logs" / job_id)
    assert record["command"].startswith(f"jit slurm submit --preset test --run-dir {run_dir} ")
    assert "--wait" in record["command"] and record["command"].endswith(" ".join(TINY))

    wait_for(lambda: slurm_job_info(job_id)["State"] == "COMPLETED", 60, "sacct COMPLETED")
    assert slurm_job_info(job_id)["AllocTRES"].count("mem=2G") == 1   # the default request (estimate, floor)

    # a run folder may be someone else's: watching it must never unpickle what it holds
    marker = run_dir.parent / "unpickled"
    for pkl in (run_dir / "slurm" / "logs").rglob("*.pkl"):
        pkl.write_bytes(pickle.dumps(_Trap(str(marker))))
    for target in (str(run_dir), job_id):   # by folder, and by job id (found through sacct)
        res = jit("status", target)
        assert res.exit_code == 0, res.output
        assert f"job {job_id}: COMPLETED  requeues 0" in res.output and "step 4/4" in res.output
    res = jit("logs", str(run_dir), "--follow")   # the job has ended: prints and returns
    assert res.exit_code == 0, res.output
    assert "Job completed successfully" in res.output and f"job {job_id} ended: COMPLETED" in res.output
    assert wait_for_end(job_id, "slurm", run_dir)["status"] == "finished"   # what --wait reads
    assert not marker.exists(), "status/logs/wait unpickled a file from the run folder"


PAIR_VCO = ("vco.encoder=efficientnet_lite0", "vco.calib_images=32")   # the offline encoder, quick statistics


@pytest.mark.slurm
def test_pair_sweep_trains_baseline_and_vco(slurm_cluster, run_dir, tmp_path):
    """`--plugin vco --sweep plugins=none,vco` with vco.* options: one job array, two runs, one without and
    one with the feature stream (the sweep value wins over --plugin; the baseline drops the vco options)."""
    res = jit("submit", "--preset", "test", "--plugin", "vco", "--run-dir", str(run_dir), *CPU,
              "--sweep", "plugins=none,vco", "--wait", "train.max_steps=3", *TINY, *PAIR_VCO)
    assert res.exit_code == 0, res.output
    assert "plugins=none: ignoring the options of 'vco', which this run does not enable" in res.output
    array_id = re.search(r"submitted 2 runs as job (\d+)", res.output)[1]
    none, vco = run_dir / "plugins=none", run_dir / "plugins=vco"
    for index, element in enumerate((none, vco)):
        assert f"{element}: finished at step 3" in res.output
        assert (element / "checkpoints" / "step-00000003").is_dir()
        rec = read_jobs(element)[-1]
        assert rec["job_id"] == f"{array_id}_{index}" and rec["array_index"] == index
    configs = {e: json.loads((e / "config.json").read_text()) for e in (none, vco)}
    assert configs[none]["plugins"] == [] and configs[none]["plugin_options"] == {}
    assert configs[vco]["plugins"] == ["vco"] and configs[vco]["plugin_options"]["vco"]["encoder"] == "efficientnet_lite0"
    metrics = {e: json.loads((e / "metrics.jsonl").read_text().splitlines()[-1]) for e in (none, vco)}
    assert "loss/feature" in metrics[vco] and "loss/feature" not in metrics[none], metrics
    weights = {e: load_file(e / "checkpoints" / "step-00000003" / "model.safetensors") for e in (none, vco)}
    assert set(weights[vco]) > set(weights[none])   # the feature stream's own weights
    assert any(not torch.equal(weights[none][k], weights[vco][k]) for k in weights[none])
    root = read_jobs(run_dir)[-1]
    assert root["job_id"] == array_id and len(root["elements"]) == 2
    res = jit("status", str(run_dir))
    assert res.exit_code == 0 and res.output.count("step 3/3") == 2, res.output

    out = tmp_path / "compare"
    res = CliRunner().invoke(cli, ["compare", str(none), str(vco), "--out", str(out), "--num-samples", "4"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    diff = (out / "config_diff.md").read_text()
    assert "identical" not in diff and '| plugins | `[]` | `["vco"]` |' in diff, diff
    assert '| plugin_options.vco.encoder | (not set) | `"efficientnet_lite0"` |' in diff, diff


@pytest.mark.slurm
def test_bad_partition_shows_sbatch_message(slurm_cluster, run_dir):
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), *CPU, "--partition", "nope", *TINY)
    assert res.exit_code == 1
    assert "sbatch refused the job: invalid partition specified: nope" in res.output
    assert "sinfo -s" in res.output and "Traceback" not in res.output
    assert not run_dir.exists()   # nothing half-made left behind


@pytest.mark.slurm
@pytest.mark.parametrize("ask", [["--nodes", "2", "--allow-local-run-dir"], ["--cpus-per-task", "3"],
                                 ["--mem-per-task", "100000"], ["--gpus-per-node", "1"]])
def test_unsatisfiable_request_refused_at_submit(slurm_cluster, run_dir, ask):
    """What no node of the cluster has (sinfo) is refused before sbatch, saying what the cluster has; SLURM itself
    would queue the 2-node job forever."""
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), *ask, *TINY)
    assert res.exit_code == 1, res.output
    assert "the job can never start" in res.output and "partition debug (the default) has 1 node" in res.output
    assert re.search(r"localhost: 2 CPUs, [\d.]+ GB, no GPUs", res.output), res.output
    assert not run_dir.exists() and "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------- no cluster
def _mask(script: str, run_dir: Path) -> str:
    return script.replace(str(run_dir), "<RUN>").replace(sys.executable, "<PYTHON>")


GOLDEN_MULTINODE = """\
#!/bin/bash

# Parameters
#SBATCH --account=acct
#SBATCH --constraint=h100
#SBATCH --cpus-per-task=12
#SBATCH --error=<RUN>/slurm/logs/%j/%j_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=8
#SBATCH --job-name=jit-run
#SBATCH --mem=64GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --open-mode=append
#SBATCH --output=<RUN>/slurm/logs/%j/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --time=4320
#SBATCH --wckey=submitit

# setup
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-12}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <RUN>/slurm/logs/%j/%j_%t_log.out --error <RUN>/slurm/logs/%j/%j_%t_log.err \
<PYTHON> -u -m submitit.core._submit <RUN>/slurm/logs/%j
"""


def test_dry_run_golden_multinode_gpu(tmp_path):
    run_dir = tmp_path / "run"
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), "--nodes", "2", "--gpus-per-node", "8",
              "--cpus-per-task", "12", "--partition", "gpu", "--account", "acct", "--qos", "high",
              "--time", "72:00:00", "--constraint", "h100", "--sbatch", "exclusive=", "--dry-run")
    assert res.exit_code == 0, res.output
    script = _mask(res.stdout.split("# run config for")[0], run_dir)
    assert script.split("\n", 1)[1].rstrip() == GOLDEN_MULTINODE.rstrip()
    config = json.loads(res.stdout.split(f"# run config for {run_dir}\n", 1)[1])
    assert config["model"] == "JiT-T/4" and config["run_dir"] == str(run_dir)
    assert "not on shared storage" in res.stderr    # the dry run warns what submitting would refuse
    assert not run_dir.exists()                      # and creates nothing


def _dry_run_configs(stdout: str) -> tuple[list[str], list[dict]]:
    parts = re.split(r"# array element \d: run config for (\S+)\n", stdout)
    return parts[1::2], [json.loads(p) for p in parts[2::2]]


@pytest.mark.parametrize("preset", ["vco-tiny", "test"])
def test_dry_run_sweep_baseline_vs_vco_pair(tmp_path, preset):
    """The documented pair with V-Co options: vco-tiny (V-Co and its options from the preset) or --plugin vco and
    vco.* options on the command line. Both elements' configs are printed; the baseline has no V-Co, and says so."""
    run_dir = tmp_path / "pair"
    extra = ["--plugin", "vco"] if preset == "test" else []
    res = jit("submit", "--preset", preset, *extra, "--run-dir", str(run_dir), "--sweep", "plugins=none,vco",
              "--dry-run", "vco.encoder=efficientnet_lite0", "vco.drift_coef=5")
    assert res.exit_code == 0, res.output
    assert "#SBATCH --array=0-1%2" in res.stdout
    assert f"#SBATCH --output={run_dir}/slurm/logs/%A_%a/%A_%a_0_log.out" in res.stdout
    given = "vco.encoder=efficientnet_lite0, vco.groups_per_step=8, vco.drift_coef=5" if preset == "vco-tiny" else \
        "vco.encoder=efficientnet_lite0, vco.drift_coef=5"
    assert f"warning: plugins=none: ignoring the options of 'vco', which this run does not enable ({given})" in res.stderr
    assert "#   plugins=none: plugins=[], vco.* unset\n" in res.stdout
    assert '#   plugins=vco: plugins=["vco"], ' in res.stdout and 'vco.drift_coef=5.0' in res.stdout
    folders, configs = _dry_run_configs(res.stdout)
    assert folders == [str(run_dir / "plugins=none"), str(run_dir / "plugins=vco")]
    assert configs[0]["plugins"] == [] and configs[0]["plugin_options"] == {}
    assert configs[1]["plugins"] == ["vco"] and configs[1]["plugin_options"]["vco"]["drift_coef"] == 5.0
    for cfg in configs:   # identical everything else
        for key in ("plugins", "plugin_options", "run_dir"):
            cfg.pop(key)
    assert configs[0] == configs[1]
    assert "submitting would fail" not in res.stderr and not run_dir.exists()


def test_sweep_of_identical_runs_refused(tmp_path):
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--sweep", "optim.lr=1e-3,0.001",
              "--dry-run")
    assert res.exit_code == 1
    assert "--sweep elements optim.lr=1e-3 and optim.lr=0.001 resolve to the same run config" in res.output
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--sweep", "plugins=none,[]")
    assert res.exit_code == 1 and "resolve to the same run config" in res.output
    assert not (tmp_path / "r").exists()


def test_vco_element_without_its_weights_refused(tmp_path):
    """The vco-b16 pair offline without DINOv2 weights: the dry run lists it, submitting refuses it (before
    anything is queued, instead of failing in the queue); local weights make it pass."""
    run_dir, data = tmp_path / "pair", tmp_path / "imagenet"
    (data / "n01").mkdir(parents=True)
    args = ["submit", "--executor", "local", "--preset", "vco-b16", "--run-dir", str(run_dir), "--sweep",
            "plugins=none,vco", f"data.path={data}"]
    res = jit(*args, "--dry-run")
    assert res.exit_code == 0, res.output
    assert (f"warning: submitting would fail: {run_dir / 'plugins=vco'} would fail as soon as it starts: vco: DINOv2 "
            "weights not available offline: pass vco.encoder_weights=") in res.stderr
    assert "plugins=none would fail" not in res.stderr
    res = jit(*args)
    assert res.exit_code == 1 and "DINOv2 weights not available offline" in res.output
    assert not run_dir.exists()
    res = jit(*args, f"vco.encoder_weights={tmp_path / 'dinov2.safetensors'}", "--dry-run")
    assert res.exit_code == 1   # an option naming a missing file is refused by the start-up option checks
    assert (f"vco.encoder_weights='{tmp_path / 'dinov2.safetensors'}' does not exist: pass the local weights file "
            "or folder") in res.stderr
    (tmp_path / "dinov2.safetensors").write_bytes(b"x")
    res = jit(*args, f"vco.encoder_weights={tmp_path / 'dinov2.safetensors'}", "--dry-run")
    assert res.exit_code == 0 and "submitting would fail" not in res.stderr, res.stderr
    res = jit("submit", "--executor", "local", "--preset", "test", "--plugin", "vco", "--run-dir", str(run_dir),
              "--dry-run")   # DINOv2 on the test preset's 8x8 grid
    assert "vco.encoder=dinov2 gives a 16x16 token grid, but the model's grid is 8x8" in res.stderr


def test_memory_default_and_warning(tmp_path):
    """No --mem-per-task: sbatch gets the estimate (at least 2 GB for a CPU task); a request below the estimate
    is sent as asked, with a warning."""
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--tasks-per-node", "2", "--dry-run")
    assert res.exit_code == 0 and "#SBATCH --mem=4GB\n" in res.stdout, res.output   # 2 GB x 2 tasks
    res = jit("submit", "--preset", "tiny", "--run-dir", str(tmp_path / "r"), "--mem-per-task", "0.5", "--dry-run")
    assert res.exit_code == 0 and "#SBATCH --mem=512MB\n" in res.stdout, res.output
    assert "warning: --mem-per-task 0.5 GB is below the estimated 1.2 GB a task of this run uses" in res.stderr
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--sbatch", "mem-per-cpu=4G", "--dry-run")
    assert "#SBATCH --mem-per-cpu=4G\n" in res.stdout and "--mem=" not in res.stdout   # asked for otherwise


def test_unknown_profile_lists_available(tmp_path):
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--profile", "exampel")
    assert res.exit_code == 1
    assert "unknown cluster profile 'exampel' (did you mean 'example'?); available: example" in res.output


def test_profile_values_and_cli_override(tmp_path, monkeypatch):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "mine.toml").write_text('partition = "gpu"\ngpus_per_node = 4\ncpus_per_task = 6\n'
                                        'time = "1:00:00"\n[sbatch]\nmail-type = "END"\n')
    monkeypatch.setenv("JIT_CLUSTER_PROFILES", str(profiles))
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--profile", "mine",
              "--partition", "big", "--dry-run")
    assert res.exit_code == 0, res.output
    for line in ("--partition=big", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=6",
                 "--time=60", "--mail-type=END"):
        assert f"#SBATCH {line}\n" in res.stdout
    (profiles / "bad.toml").write_text("gpus_per_nod = 4\n")
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "r"), "--profile", "bad")
    assert res.exit_code == 1 and "unknown key 'gpus_per_nod' (did you mean 'gpus_per_node'?)" in res.output


def test_multinode_local_run_dir_refused(tmp_path):
    run_dir = tmp_path / "run"   # under /tmp
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), "--nodes", "2", *TINY)
    assert res.exit_code == 1
    assert f"run folder {run_dir} is not on shared storage (it is under /tmp" in res.output
    assert "--allow-local-run-dir" in res.output and not run_dir.exists()


def test_no_slurm_installed(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "run"), *TINY)
    assert res.exit_code == 1
    assert "SLURM not found: install slurm-client or use --executor local" in res.output
    assert not (tmp_path / "run").exists()


def test_debug_executor_runs_in_process_and_reraises(tmp_path):
    """DebugExecutor would open pdb on an exception: the launcher re-raises it as a clear message."""
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "ok"), "--executor", "debug",
              "train.max_steps=2", *TINY)
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'ok'}: finished at step 2" in res.output
    assert os.environ.get("WORLD_SIZE") is None     # the job's torchrun variables did not leak
    res = jit("submit", "--preset", "test", "--run-dir", str(tmp_path / "bad"), "--executor", "debug",
              "train.max_steps=2", "optim.batch_size=100000", *TINY)
    assert res.exit_code == 1
    assert "failed" in res.output and "lower optim.batch_size" in res.output


@pytest.mark.slurm
def test_study_as_a_job_array_trains_evaluates_and_reports(slurm_cluster, run_dir):
    """`jit slurm study`: one job array of (arm, seed) runs, each trained then evaluated in its job; the local
    `jit study --report-only` then reports them (here the JiT arm, 2 seeds, a few steps)."""
    res = jit("study", "vco-tiny-pair", "--out", str(run_dir), "--arms", "JiT", "--seeds", "0,1", "--num-images",
              "16", *CPU, "train.max_steps=2", *TINY)
    assert res.exit_code == 0, res.output
    assert "submitted study vco-tiny-pair: 2 runs (slurm)" in res.output
    array = read_jobs(run_dir)[-1]
    assert array["array_job_id"] and len(array["element_job_ids"]) == 2
    done = [run_dir / "JiT" / f"seed-{s}" / "study-element.json" for s in (0, 1)]
    wait_for(lambda: all(p.exists() for p in done), 240, "both study elements trained and evaluated")
    assert all(json.loads(p.read_text())["result"].endswith(".json") for p in done)
    _add_optional_commands()
    res = CliRunner().invoke(cli, ["study", "vco-tiny-pair", "--out", str(run_dir), "--arms", "JiT", "--seeds",
                                   "0,1", "--report-only", "train.max_steps=2", *TINY])
    assert res.exit_code == 0, res.output
    arms = json.loads((run_dir / "report" / "arms.json").read_text())
    assert arms["rows"][0]["n_runs"] == 2
