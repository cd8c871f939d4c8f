"""Can the cluster ever start this job? Its nodes as ``sinfo`` lists them, against what the job asks per node.

SLURM accepts a job that asks for more nodes than a partition has (with a 1-node partition, ``--nodes 2``
stays PENDING forever, reason ``PartitionNodeLimit`` or ``Resources``), and refuses some other impossible
requests only with a generic "Requested node configuration is not available". Checking the configured
nodes first gives one message that says what the cluster has. Node states are not held against a job
(a drained node may come back); only what no configured node could ever offer is refused.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from .options import ClusterOptions, LaunchError

SINFO_FORMAT = "%N|%P|%c|%m|%G|%f"


@dataclass(frozen=True)
class Node:
    name: str
    partition: str        # without the default marker
    default: bool         # the cluster's default partition
    cpus: int
    mem_mb: int
    gpus: int
    features: frozenset

    def describe(self) -> str:
        gpus = f"{self.gpus} GPUs" if self.gpus else "no GPUs"
        return f"{self.name}: {self.cpus} CPUs, {self.mem_mb / 1024:.1f} GB, {gpus}"


def _gpus(gres: str) -> int:
    """GPUs in an sinfo GRES field: ``gpu:8``, ``gpu:a100:4(S:0-1),gpu:h100:4`` -> 8; ``(null)`` -> 0."""
    return sum(int(m[1]) for m in re.finditer(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def parse_sinfo(text: str) -> list[Node]:
    nodes = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, partition, cpus, mem, gres, features = parts
        try:
            nodes.append(Node(name, partition.rstrip("*"), partition.endswith("*"), int(cpus), int(mem.rstrip("+")),
                              _gpus(gres), frozenset(f for f in features.split(",") if f and f != "(null)")))
        except ValueError:
            continue
    return nodes


def cluster_nodes(timeout: float = 30) -> list[Node] | None:
    """Every configured node of every partition (``sinfo -N``), or None when sinfo cannot say."""
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(proc.stdout) if proc.returncode == 0 else None


def _required_features(constraint: str | None) -> frozenset | None:
    """The features a simple ``--constraint`` (``a`` or ``a&b``) requires; None for other expressions."""
    if not constraint:
        return frozenset()
    if re.fullmatch(r"[\w.-]+(&[\w.-]+)*", constraint):
        return frozenset(constraint.split("&"))
    return None


def check_capacity(opts: ClusterOptions, nodes: list[Node] | None) -> None:
    """Refuse a job no set of the cluster's configured nodes can ever run (LaunchError saying what they have)."""
    if opts.executor != "slurm" or not nodes:
        return
    if opts.partition:
        wanted = set(opts.partition.split(","))
        pool = [n for n in nodes if n.partition in wanted]
        if not pool:
            return   # an unknown partition: sbatch's own message names it
        where = f"partition {opts.partition}"
    else:
        pool = [n for n in nodes if n.default] or nodes
        where = f"partition {pool[0].partition} (the default)"
    features = _required_features(opts.constraint)
    per_node = {"CPUs": opts.ntasks_per_node * (opts.cpus_per_task or 1),
                "GB": opts.ntasks_per_node * (opts.mem_per_task or 0),
                "GPUs": opts.gpus_per_node}

    def fits(n: Node) -> bool:
        return (n.cpus >= per_node["CPUs"] and n.mem_mb >= per_node["GB"] * 1024 and n.gpus >= per_node["GPUs"]
                and (features is None or features <= n.features))
    fitting = {n.name for n in pool if fits(n)}
    if len(fitting) >= opts.nodes:
        return
    asked = (f"{opts.nodes} node{'s' if opts.nodes > 1 else ''} with {per_node['CPUs']} CPUs, "
             f"{per_node['GB']:g} GB" + (f", {per_node['GPUs']} GPUs" if per_node["GPUs"] else "")
             + (f" and features {opts.constraint}" if opts.constraint else "") + " each")
    names = sorted({n.name for n in pool})
    shown = "; ".join(dict.fromkeys(n.describe() for n in pool if n.name in names[:8]))
    more = f"; ... ({len(names)} nodes)" if len(names) > 8 else ""
    raise LaunchError(f"the job can never start: it asks for {asked} ({opts.ntasks_per_node} task"
                      f"{'s' if opts.ntasks_per_node > 1 else ''} per node), but {where} has {len(names)} node"
                      f"{'s' if len(names) > 1 else ''}, {len(fitting)} of them big enough ({shown}{more}). Lower "
                      "--nodes / --tasks-per-node / --cpus-per-task / --mem-per-task / --gpus-per-node, or pick "
                      "another --partition (`sinfo -N -o '%N %P %c %m %G %f'` lists the nodes)")
