"""`jit slurm submit|status|logs` through the CLI (click's CliRunner), against the real local SLURM
cluster where a job runs; dry runs and input errors need no cluster."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jit_core.cli import _add_optional_commands, cli
from slurm.records import read_jobs
from slurm.watch import slurm_job_info

from .test_launcher import TINY, wait_for

pytestmark = pytest.mark.timeout(300)

CPU = ["--cpus-per-task", "1", "--mem-per-task", "1", "--time", "10"]


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
    for target in (str(run_dir), job_id):   # by folder, and by job id (found through sacct)
        res = jit("status", target)
        assert res.exit_code == 0, res.output
        assert f"job {job_id}: COMPLETED  requeues 0" in res.output and "step 4/4" in res.output
    res = jit("logs", str(run_dir), "--follow")   # the job has ended: prints and returns
    assert res.exit_code == 0, res.output
    assert "Job completed successfully" in res.output and f"job {job_id} ended: COMPLETED" in res.output


@pytest.mark.slurm
def test_sweep_array_two_runs(slurm_cluster, run_dir):
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), *CPU, "--sweep", "optim.lr=0.001,0.002",
              "--wait", "train.max_steps=2", *TINY)
    assert res.exit_code == 0, res.output
    array_id = re.search(r"submitted 2 runs as job (\d+)", res.output)[1]
    for index, lr in enumerate(("0.001", "0.002")):
        element = run_dir / f"optim.lr={lr}"
        assert f"{element}: finished at step 2" in res.output
        assert json.loads((element / "config.json").read_text())["optim"]["lr"] == float(lr)
        assert (element / "checkpoints" / "step-00000002").is_dir()
        rec = read_jobs(element)[-1]
        assert rec["job_id"] == f"{array_id}_{index}" and rec["array_index"] == index
    root = read_jobs(run_dir)[-1]
    assert root["job_id"] == array_id and len(root["elements"]) == 2
    res = jit("status", str(run_dir))
    assert res.exit_code == 0 and res.output.count("step 2/2") == 2, res.output


@pytest.mark.slurm
def test_bad_partition_shows_sbatch_message(slurm_cluster, run_dir):
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), *CPU, "--partition", "nope", *TINY)
    assert res.exit_code == 1
    assert "sbatch refused the job: invalid partition specified: nope" in res.output
    assert "sinfo -s" in res.output and "Traceback" not in res.output
    assert not run_dir.exists()   # nothing half-made left behind


@pytest.mark.slurm
def test_unsatisfiable_memory_shows_sbatch_message(slurm_cluster, run_dir):
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), "--mem-per-task", "100000", *TINY)
    assert res.exit_code == 1
    assert "Requested node configuration is not available" in res.output
    assert "lower --mem-per-task" in res.output


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


def test_dry_run_sweep_baseline_vs_vco_pair(tmp_path):
    run_dir = tmp_path / "pair"
    res = jit("submit", "--preset", "test", "--run-dir", str(run_dir), "--sweep", "plugins=none,vco", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "#SBATCH --array=0-1%2" in res.stdout
    assert f"#SBATCH --output={run_dir}/slurm/logs/%A_%a/%A_%a_0_log.out" in res.stdout
    parts = re.split(r"# array element \d: run config for (\S+)\n", res.stdout)
    folders, configs = parts[1::2], [json.loads(p) for p in parts[2::2]]
    assert folders == [str(run_dir / "plugins=none"), str(run_dir / "plugins=vco")]
    assert configs[0]["plugins"] == [] and configs[1]["plugins"] == ["vco"]
    for cfg in configs:   # identical everything else
        for key in ("plugins", "plugin_options", "run_dir"):
            cfg.pop(key)
    assert configs[0] == configs[1]


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
