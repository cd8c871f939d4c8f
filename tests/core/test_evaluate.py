"""``jit evaluate``: protocol labels and rank split, deterministic generation, files, provenance, CFG sweep."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jit_core import api
from jit_core.config import load_config
from jit_core.eval import classifier as C
from jit_core.eval import evaluate as E
from jit_core.eval import fid as M
from jit_core.runs.checkpoint import save_checkpoint

PROVENANCE_KEYS = {
    "run_dir", "checkpoint", "model", "training", "sampler", "guidance", "samples", "selection", "versions",
    "metrics", "metric_kind", "metric_provenance", "date", "wall_time_s", "name", "json",
}
NESTED_KEYS = {
    "checkpoint": {"path", "step", "weights", "ema_decay", "weights_file", "weights_sha256"},
    "model": {"name", "trainable_params", "plugins", "streams"},
    "training": {"batch_size_per_rank", "global_batch", "lr_last_logged"},
    "sampler": {"method", "steps", "velocity_evaluations", "final_step", "t_eps", "precision", "attention"},
    "guidance": {"cfg", "scale_per_stream", "interval", "interval_ends", "unconditional", "all_streams_unguided"},
    "samples": {"num_images", "label_scheme", "seed", "format", "path", "world_size"},
    "versions": {"torch", "timm", "torch-fidelity", "numpy", "python"},
}


def make_run(run_dir, seed: int = 0, loss_terms=(), overrides=(), steps: int = 6) -> Path:
    """A tiny run folder without training: the ``test`` preset (JiT-T/4, digits), perturbed random weights
    saved with ``save_checkpoint``, and a synthetic metrics.jsonl."""
    cfg = load_config("test", None, list(overrides))
    cfg.model_overrides = {"in_channels": 1, "num_classes": 10}
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run)
    (run / "config.json").write_text(cfg.to_json())
    model, _ = api.build_model_for(cfg)
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    save_checkpoint(run, steps, {"model": sd, "ema1": {k: v + 0.01 for k, v in sd.items()}, "ema2": sd},
                    {"step": steps})
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            row = {"step": s, "epoch": s / 100, "time": 3.0 * s, "lr": 1e-3, "loss": 2.0 / s,
                   "loss/pixel": 1.5 / s, "img_per_s": 8.0, **{f"loss/{t}": 0.5 / s for t in loss_terms}}
            f.write(json.dumps(row) + "\n")
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """A private classifier cache with a quickly trained (few-epoch) digits classifier."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setitem(C.DEFAULT_EPOCHS, "digits", 4)
        yield


# ----------------------------------------------------------------------------------- protocol pieces
def test_class_major_labels():
    lab = E.class_major_labels(50_000, 1000)
    assert lab[49] == 0 and lab[50] == 1 and lab[-1] == 999
    assert torch.bincount(lab).eq(50).all()
    assert E.class_major_labels(20, 10).tolist() == [i // 2 for i in range(20)]


@pytest.mark.parametrize("n,b,world", [(50, 8, 1), (50, 8, 3), (20, 10, 2), (7, 4, 4)])
def test_rank_blocks_cover_every_id_once(n, b, world):
    ids = [i for r in range(world) for lo, hi in E.rank_blocks(n, b, r, world) for i in range(lo, hi)]
    assert sorted(ids) == list(range(n))
    if world > 1 and n > b:
        assert E.rank_blocks(n, b, 1, world)[0] == (b, min(2 * b, n))  # rank 1 starts at r * b


def test_generation_does_not_depend_on_batch_size_or_rank_split(tiny_run):
    """What the design promises: sample i's noise is a function of (seed, i) only, bit for bit, whatever the batch
    or the rank; the same batches give the same images bit for bit, however they are split across ranks; other
    batch sizes give the same images up to float rounding (batched kernels may round the last bit differently
    with the batch size: at most one uint8 level, on a small fraction of the pixels)."""
    from jit_core.diffusion.generate import SampleSpec, initial_noise
    run = api.load_run(tiny_run)
    n = 6
    sampling = {"cfg": 1.5, "steps": 2, "method": "heun", "interval": (0.1, 1.0), "seed": 3}
    kw = {"folder": None, "keep": True, "progress": False}
    whole_noise = initial_noise(run.model, torch.arange(n), 3)
    parts = [initial_noise(run.model, torch.arange(lo, lo + 2), 3) for lo in (4, 0, 2)]   # any order, any batch
    for name, tensor in whole_noise.items():
        assert torch.equal(tensor, torch.cat([parts[1][name], parts[2][name], parts[0][name]])), name
        assert not torch.equal(tensor[0], tensor[1]), name
    labels = E.class_major_labels(n, 10)
    whole = E.generate_blocks(run, labels, E.rank_blocks(n, 6), SampleSpec(batch_size=6, **sampling), **kw)[0]
    assert whole.dtype == torch.uint8 and whole.shape == (n, 1, 32, 32)
    by_two = E.generate_blocks(run, labels, E.rank_blocks(n, 2), SampleSpec(batch_size=2, **sampling), **kw)
    split = {}
    for r in range(2):  # two "ranks" with per-rank batch 2: the same batches of 2 as one rank with batch 2
        split.update(E.generate_blocks(run, labels, E.rank_blocks(n, 2, r, 2), SampleSpec(batch_size=2, **sampling),
                                         **kw))
    assert sorted(split) == sorted(by_two) == [0, 2, 4]
    assert all(torch.equal(split[k], by_two[k]) for k in by_two)
    diff = (whole.int() - torch.cat([split[k] for k in sorted(split)]).int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, (diff.max(), (diff > 0).float().mean())


def test_the_sampling_call_swaps_other_weights_in_and_out(tiny_run):
    """``generate_images(..., weights=ema1)`` on the raw model samples what the run loaded with EMA1 samples,
    and leaves the model's own weights and mode as they were (the trainer's sample grids rely on it)."""
    from jit_core.diffusion.generate import SampleSpec, generate_images
    from jit_core.runs.checkpoint import read_weights
    raw = api.load_run(tiny_run, ema="model")
    raw.model.train()
    before = {k: v.clone() for k, v in raw.model.state_dict().items()}
    labels, spec = torch.arange(4), SampleSpec(steps=1, cfg=1.5, seed=2)
    swapped = generate_images(raw.model, labels, raw.config, raw.plugins, spec, weights=read_weights(tiny_run, "ema1"))
    assert torch.equal(swapped, api.generate(api.load_run(tiny_run), labels, spec))
    assert raw.model.training and all(torch.equal(v, before[k]) for k, v in raw.model.state_dict().items())
    assert not torch.equal(swapped, api.generate(raw, labels, spec))      # the model's own weights differ


def test_an_eval_spec_and_its_fields_given_as_keywords(tiny_run, tmp_path):
    """``evaluate_run(run, spec, **fields)``: the keywords take precedence over the spec; an unknown one is refused."""
    spec = E.EvalSpec(num_images=10, steps=1, seed=5, save="none", metrics="none", progress=False)
    res = E.evaluate_run(tiny_run, spec, seed=3, out=tmp_path)
    assert res["samples"]["seed"] == 3 and res["samples"]["num_images"] == 10 and res["sampler"]["steps"] == 1
    with pytest.raises(TypeError, match="num_imgs"):
        E.evaluate_run(tiny_run, spec, num_imgs=10)


# ----------------------------------------------------------------------------------- evaluate_run
def test_evaluate_writes_pngs_and_full_provenance(tiny_run, cache_env):
    res = E.evaluate_run(tiny_run, num_images=20, steps=2, seed=0, progress=False)
    assert PROVENANCE_KEYS <= set(res), PROVENANCE_KEYS - set(res)
    for section, keys in NESTED_KEYS.items():
        assert keys <= set(res[section]), (section, keys - set(res[section]))
    assert res["checkpoint"]["step"] == 6 and res["checkpoint"]["weights"] == "ema1"
    assert res["checkpoint"]["weights_sha256"] == M.file_sha256(res["checkpoint"]["weights_file"])
    assert res["sampler"]["velocity_evaluations"] == 3 and res["sampler"]["final_step"] == "Heun + final Euler"
    assert res["guidance"]["scale_per_stream"] == {"pixel": 1.5} and res["guidance"]["unconditional"]["null_label"] == 10
    assert res["samples"]["num_images"] == 20 and res["samples"]["seed"] == 0
    # the embedded dataset's metric, named as what it is
    assert res["metric_kind"] == "classifier" and res["primary_metric"] == "fd_classifier"
    assert {"fd_classifier", "classifier_accuracy", "classifier_test_accuracy", "reference"} <= set(res["metrics"])
    assert "not FID" in res["metrics"]["fd_classifier_label"]
    folder = Path(res["samples"]["path"])
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(20)]
    saved = json.loads(Path(res["json"]).read_text())
    assert saved["name"] == res["name"] and Path(res["json"]).parent == tiny_run / "eval"


def test_npz_output_is_uint8_nhwc_and_deterministic(tiny_run, tmp_path):
    kw = {"num_images": 10, "steps": 1, "metrics": "none", "save": "npz", "progress": False}
    a = E.evaluate_run(tiny_run, out=tmp_path / "a", batch_size=10, **kw)
    b = E.evaluate_run(tiny_run, out=tmp_path / "b", batch_size=3, **kw)
    with np.load(a["samples"]["path"]) as za, np.load(b["samples"]["path"]) as zb:
        assert za.files == ["arr_0"] and za["arr_0"].dtype == np.uint8 and za["arr_0"].shape == (10, 32, 32, 1)
        # same noise per image whatever the batch; batched float kernels may still round a pixel differently
        diff = np.abs(za["arr_0"].astype(int) - zb["arr_0"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_cfg_sweep_reports_the_minimum(tiny_run, tmp_path, monkeypatch):
    cfgs = [1.0, 1.4, 1.8, 2.2]
    calls = []

    def fake_metrics(kind, images, folder, labels, run, **kw):
        w = cfgs[len(calls)]
        calls.append(w)
        return {"fd_classifier": (w - 1.7) ** 2 + 1.0}
    monkeypatch.setattr(E, "compute_metrics", fake_metrics)
    res = E.evaluate_run(tiny_run, num_images=10, cfg=cfgs, steps=1, save="none", out=tmp_path, progress=False)
    assert calls == cfgs
    assert res["kind"] == "cfg_sweep" and res["best_cfg"] == 1.8 and res["primary_metric"] == "fd_classifier"
    assert res["best"]["guidance"]["cfg"] == 1.8 and len(res["results"]) == 4
    assert all(r["selection"]["cfg_chosen_on_these_samples"] for r in res["results"])
    assert Path(res["json"]).is_file() and len(list(tmp_path.glob("*cfg1.4*.json"))) == 1
    assert "*" in E.format_table(res).splitlines()[3]  # the best row is marked


def test_fid_path_in_evaluate_with_reference_stats(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    weights = M.random_inception_weights(tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=rng.normal(size=2048), sigma=np.eye(2048))
    res = E.evaluate_run(tiny_run, num_images=10, steps=1, metrics="fid", ref_stats=ref, inception_weights=weights,
                         save="none", out=tmp_path / "eval", progress=False)
    assert res["metric_kind"] == "inception" and res["primary_metric"] == "fid"
    assert np.isfinite(res["metrics"]["fid"]) and "inception_score" in res["metrics"]
    mp = res["metric_provenance"]
    assert mp["weights_sha256"] == M.file_sha256(weights) and mp["reference_stats"]["sha256"] == M.file_sha256(ref)


def test_evaluate_cli_prints_a_table_and_the_json_path(tiny_run, tmp_path):
    res = CliRunner().invoke(E.evaluate_command(), [str(tiny_run), "--num-images", "10", "--cfg", "1.0,2.0",
                                                    "--steps", "1", "--metrics", "none", "--save", "none",
                                                    "--out", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "results:" in res.output and "cfg" in res.output
    assert list(tmp_path.glob("*cfgsweep*.json"))


# ----------------------------------------------------------------------------------- torch.distributed
def _ddp_worker(rank: int, world: int, init_file: str, run_dir: str, out: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = E.evaluate_run(run_dir, num_images=10, steps=1, batch_size=2, metrics="none", save="npz", out=out,
                             device="cpu", progress=False)
        Path(out, f"result-rank{rank}.json").write_text(json.dumps({"json": res["json"], "name": res["name"]}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_the_ids_and_rank0_writes(tiny_run, tmp_path):
    """2 gloo ranks, per-rank batch 2: rank r generates ids 4i + 2r, 4i + 2r + 1; rank 0 gathers and writes;
    the images match a single-process run and every rank gets the result."""
    import torch.multiprocessing as tmp_mp
    out = tmp_path / "ddp"
    tmp_mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tiny_run), str(out)), nprocs=2, join=True)
    r0, r1 = (json.loads((out / f"result-rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1 and Path(r0["json"]).is_file()
    assert json.loads(Path(r0["json"]).read_text())["samples"]["world_size"] == 2
    assert not list(out.glob(".*.pt")), "rank shards were not cleaned up"
    single = E.evaluate_run(tiny_run, num_images=10, steps=1, batch_size=10, metrics="none", save="npz",
                            out=tmp_path / "single", progress=False)
    with np.load(out / f"{r0['name']}.npz") as a, np.load(single["samples"]["path"]) as b:
        diff = np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# ----------------------------------------------------------------------------------- EMA x CFG grid
def test_ema_cfg_grid_one_row_per_point_best_marked_and_resumed(tiny_run, tmp_path, monkeypatch):
    calls = []
    target = {"ema1": 1.0, "ema2": 0.5}   # ema2 at cfg 1.8 is the best point

    def fake_metrics(kind, images, folder, labels, run, **kw):
        w = [1.0, 1.8][len(calls) % 2]
        calls.append((run.ema, w))
        fd = (w - 1.8) ** 2 + target[run.ema]
        return {"fd_classifier": fd, "intervals": {"fd_classifier": [fd - 0.1, fd + 0.1]}, "interval_method": "test"}
    monkeypatch.setattr(E, "compute_metrics", fake_metrics)
    kw = {"num_images": 10, "cfg": [1.0, 1.8], "ema": ["ema1", "ema2"], "steps": 1, "save": "none", "out": tmp_path,
          "progress": False}
    res = E.evaluate_run(tiny_run, **kw)
    assert calls == [("ema1", 1.0), ("ema1", 1.8), ("ema2", 1.0), ("ema2", 1.8)]
    assert res["kind"] == "ema_cfg_grid" and len(res["points"]) == 4 and len(res["results"]) == 4
    assert (res["best_ema"], res["best_cfg"]) == ("ema2", 1.8) and sum(p["best"] for p in res["points"]) == 1
    assert res["points"][3]["interval"] == pytest.approx([0.4, 0.6])
    assert all(r["selection"] == {"cfg_chosen_on_these_samples": True, "ema_chosen_on_these_samples": True}
               for r in res["results"])
    md = Path(res["json"]).with_suffix(".md").read_text()
    assert Path(res["json"]).with_suffix(".pdf").read_bytes().startswith(b"%PDF")   # the metric-vs-CFG figure
    assert Path(res["json"]).with_suffix(".png").is_file()
    assert md.count("| ema") == 4 and "**best**" in md.splitlines()[7] and "chosen on these same samples" in md
    table = E.format_table(res).splitlines()
    assert len(table) == 5 and table[4].endswith("*") and "ema2" in table[4]
    from jit_core.logsinks import result_scalars
    assert set(result_scalars(res)[1]) == {f"eval/{e}-cfg{w}/fd_classifier" for e in ("ema1", "ema2") for w in (1, 1.8)}
    # resumed: every point exists with the same settings -> nothing is recomputed
    again = E.evaluate_run(tiny_run, **kw)
    assert len(calls) == 4 and all(p["resumed"] for p in again["points"])
    assert (again["best_ema"], again["best_cfg"]) == ("ema2", 1.8)
    # one more cfg: only the new points are computed; other settings (bootstrap) recompute
    more = E.evaluate_run(tiny_run, **{**kw, "cfg": [1.0, 1.8, 2.6]})
    assert len(calls) == 6 and [p["resumed"] for p in more["points"]] == [True, True, False] * 2
    E.evaluate_run(tiny_run, **{**kw, "bootstrap": 7})
    assert len(calls) == 10


def test_classifier_metrics_carry_bootstrap_intervals(tiny_run, cache_env, tmp_path):
    res = E.evaluate_run(tiny_run, num_images=20, steps=1, save="none", out=tmp_path, bootstrap=50, progress=False)
    iv, m = res["intervals"], res["metrics"]
    assert set(iv) == {"fd_classifier", "classifier_accuracy"} and res["bootstrap"] == 50
    assert iv["fd_classifier"][0] < m["fd_classifier"] < iv["fd_classifier"][1]
    assert 0 <= iv["classifier_accuracy"][0] <= m["classifier_accuracy"] <= iv["classifier_accuracy"][1] <= 1
    assert "percentile bootstrap over the 20 generated samples, 50 resamples" in res["interval_method"]
    none = E.evaluate_run(tiny_run, num_images=20, steps=1, save="none", out=tmp_path, bootstrap=0, progress=False)
    assert none["intervals"] == {} and "no interval" in none["interval_method"]


def test_evaluate_cli_grid_and_bad_ema(tiny_run, tmp_path):
    res = CliRunner().invoke(E.evaluate_command(), [str(tiny_run), "--num-images", "4", "--ema", "ema1,ema2",
                                                    "--cfg", "1.0,2.0", "--steps", "1", "--metrics", "none",
                                                    "--save", "none", "--out", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.count("ema2") >= 2 and list(tmp_path.glob("*ema1-ema2*cfgsweep*.md"))
    assert list(tmp_path.glob("*ema1-ema2*cfgsweep*.strip.png")) and "CFG strip:" in res.output   # one row per cfg
    bad = CliRunner().invoke(E.evaluate_command(), [str(tiny_run), "--ema", "ema3", "--device", "cpu"])
    assert bad.exit_code != 0 and "ema3" in bad.output and "ema1, ema2, model" in bad.output
