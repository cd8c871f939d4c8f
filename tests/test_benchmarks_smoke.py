"""The benchmark scripts run end to end on a tiny config (no timing assertions), and the analytic
FLOP counts of benchmarks/flops.py match a hand count and torch's FLOP counter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import flops

from jit_core.model import JiT, get_model_config


def _run(script: str, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT, check=False)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


# ----------------------------------------------------------------------------------- flops.py
def test_flops_hand_count_tiny():
    """JiT-T/4 (32 px, patch 4, h 64, depth 3, K 4 from block 1, SwiGLU hidden 170), counted by hand."""
    cfg = get_model_config("JiT-T/4")
    assert (cfg.grid, cfg.mlp_hidden, cfg.in_context_len, cfg.in_context_start) == (8, 170, 4, 1)
    h, T = 64, 64
    cond = 256 * h + h * h                                   # timestep MLP
    embed = T * (4 * 4 * 3 * 16 + 16 * h)                    # 4x4x3 -> 16 -> 64 per patch
    per_token = 3 * h * h + h * h + 3 * h * 170              # qkv + proj + SwiGLU (w12: h -> 340, w3: 170 -> h)
    blocks = 3 * (h * 6 * h) + 64 * per_token + 2 * 68 * per_token   # block 0: 64 tokens; blocks 1-2: 4 + 64
    attention = 2 * 64 * 64 * h + 2 * (2 * 68 * 68 * h)
    head = h * 2 * h + T * h * (4 * 4 * 3)
    want = cond + embed + blocks + attention + head
    c = flops.model_macs(cfg)
    assert c.macs == want
    assert c.flops == 2 * want and c.train_flops == 6 * want

    # V-Co: a 768-channel token stream with its own weights; joint attention over both streams
    v = flops.model_macs(cfg, flops.vco_streams(cfg))
    tok_embed = T * (768 * 16 + 16 * h)
    tok_head = h * 2 * h + T * h * 768
    joint_attention = 2 * 128 * 128 * h + 2 * (2 * 136 * 136 * h)
    assert v.macs == (cond + embed + tok_embed + 2 * blocks + joint_attention + head + tok_head)


def test_flops_paper_b16():
    """The paper's 25 'GFLOPs' for JiT-B/16 are multiply-adds: 25.2 GMACs, 50.4 GFLOPs."""
    c = flops.model_macs(get_model_config("JiT-B/16"))
    assert abs(c.macs / 1e9 - 25) / 25 < 0.02
    for row in flops.paper_table():
        assert abs(row["ratio_macs_to_paper"] - 1) < 0.02, row


def test_flops_match_flop_counter_tiny():
    cfg = get_model_config("JiT-T/4")
    for streams in (None, flops.vco_streams(cfg)):
        model = JiT(cfg, streams, "exact").eval()
        inputs = {s.name: torch.zeros((1, s.channels, 32, 32) if s.kind == "patch" else (1, 64, s.channels))
                  for s in model.streams}
        with torch.no_grad():
            got = flops.measured_flops(lambda m=model, x=inputs: m(x, torch.zeros(1), torch.zeros(1, dtype=torch.long)))
        assert got == flops.model_macs(cfg, streams).flops


def test_dinov2_flops():
    c = flops.vit_macs()
    assert abs(c.macs / 1e9 - 23.5) < 0.2       # ViT-B/14 at 224 with 5 prefix tokens: 261 tokens
    step = flops.vco_dinov2_step_flops()
    assert step["total"] == 3 * c.flops + step["pred_embed_bwd_input"]


def test_flops_cli(capsys):
    assert flops.main([]) == 0
    out = capsys.readouterr().out
    assert "JiT-B/16" in out and "MACs/paper" in out and "DINOv2" in out


# ----------------------------------------------------------------------------------- scripts
def test_bench_train_tiny(tmp_path):
    out_json = tmp_path / "train.json"
    out = _run("bench_train.py", "--model", "JiT-T/4", "--batch", "2", "--device", "cpu", "--steps", "1",
               "--warmup", "0", "--memory", "off", "--encoder", "efficientnet_lite0", "--num-classes", "10",
               "--variants", "official,ours,ours +ckpt", "--json", str(out_json))
    data = json.loads(out_json.read_text())
    rows = {(r["net"], r["variant"]): r for r in data["rows"]}
    nets = {r["net"] for r in data["rows"]}
    assert ("jit", "official") in rows and ("jit", "ours") in rows and ("jit", "ours +ckpt") in rows
    assert rows[("jit", "ours +ckpt")]["ckpt"] and rows[("jit", "official")]["attention"] == "exact"
    for r in data["rows"]:
        assert r["error"] is None and r["median_s"] > 0 and r["train_flops_per_image"] > 0
    if "vco" in nets:   # the V-Co step includes the encoder's FLOPs
        assert rows[("vco", "ours")]["encoder_flops_per_image"] > 0
        assert "V-Co / JiT" in out
    assert "ours/official" in out


def test_bench_train_memory_probe():
    """The CPU memory probe (normally a subprocess per variant), run in this process."""
    import bench_train
    args = bench_train.parse_args(["--model", "JiT-T/4", "--batch", "2", "--device", "cpu", "--num-classes", "10",
                                   "--probe", json.dumps({"net": "jit", "attention": "fast", "ckpt": True})])
    mem = bench_train.probe(args)
    assert mem["peak_rss_gib"] > 0
    assert bench_train.run_probe_subprocess.__name__  # the subprocess wrapper exists (exercised by the CPU set)


def test_variants():
    import bench_train
    cpu = {v.label: v for v in bench_train.make_variants(["jit"], "cpu", bench_train.LEVERS_CPU)}
    assert set(cpu) == {"official", "ours", "ours -fast-attn", "ours -fused", "ours +ckpt"}
    assert cpu["official"].attention == "exact" and cpu["ours"].attention == "fast"
    assert cpu["ours"].fused and not cpu["official"].fused and not cpu["ours -fused"].fused
    cuda = {v.label: v for v in bench_train.make_variants(["jit", "vco"], "cuda", bench_train.LEVERS_CUDA)}
    ours, official = cuda["ours"], cuda["official"]
    assert ours.compile and ours.fused and ours.bf16 and official.bf16 and not official.fused
    assert {"eager", "eager -fast-attn", "eager -fused", "eager -bf16", "eager +ckpt"} <= set(cuda)


def test_bench_sample_tiny(tmp_path):
    out_json = tmp_path / "sample.json"
    out = _run("bench_sample.py", "--model", "JiT-T/4", "--batch", "2", "--device", "cpu", "--sample-steps", "2",
               "--repeats", "1", "--warmup", "0", "--encoder", "efficientnet_lite0", "--num-classes", "10",
               "--variants", "two-pass,ours", "--json", str(out_json))
    rows = json.loads(out_json.read_text())["rows"]
    by = {(r["net"], r["variant"]): r for r in rows}
    assert {"two-pass", "ours"} <= {r["variant"] for r in rows}
    # batched CFG evaluates the same images in fewer forward calls
    assert by[("jit", "ours")]["image_evaluations"] == by[("jit", "two-pass")]["image_evaluations"]
    assert by[("jit", "ours")]["forward_calls"] < by[("jit", "two-pass")]["forward_calls"]
    assert "extrapolated" in out


def test_heun50_evaluation_count():
    """Heun-50 is 99 network evaluations; guided ones cost 2 images (one call batched, two calls otherwise)."""
    import bench_sample

    from jit_core.config import get_preset
    from jit_core.plugins import Plugins
    cfg = get_preset("test")
    model = JiT(get_model_config("JiT-T/4"))
    hook = Plugins().hook
    rows_b, calls_b = bench_sample.image_evaluations(model, hook, cfg, 50, True, 2.9, (0.1, 1.0))
    rows_t, calls_t = bench_sample.image_evaluations(model, hook, cfg, 50, False, 2.9, (0.1, 1.0))
    assert calls_b == 99 and rows_b == rows_t == calls_t
    assert 99 < rows_b < 198
    rows_u, _ = bench_sample.image_evaluations(model, hook, cfg, 50, True, 1.0, (0.1, 1.0))
    assert rows_u == 99   # no guidance: one image per evaluation


@pytest.mark.parametrize("script", ["run_all.sh", "gpu.sh"])
def test_shell_scripts_parse(script):
    res = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------------- data loading, gpu.sh
def test_bench_data_tiny(tmp_path):
    """JPEGs of ImageNet sizes are synthesised, decoded + centre-cropped, and the worker count derived."""
    out_json = tmp_path / "data.json"
    out = _run("bench_data.py", "--images", "4", "--size", "32", "--repeats", "1", "--workers", "0",
               "--json", str(out_json))
    data = json.loads(out_json.read_text())
    assert data["ms_per_image"] > 0 and data["workers_needed"] >= 1
    assert 2500 < data["demand_img_s"] < 2700     # JiT-B/16 at 40 % MFU of an H100's 989 TFLOPS
    assert "workers" in out


def test_bench_data_images_are_imagenet_sized(tmp_path):
    import bench_data
    from PIL import Image
    bench_data.synthesize_jpegs(tmp_path, 2)
    sizes = sorted(Image.open(p).size for p in tmp_path.rglob("*.JPEG"))
    assert sizes == [(375, 500), (500, 375)]


def test_exact_attention_batch_fits():
    """V-Co-B/16's exact attention keeps 341 MB of scores per image: 64 per 80 GB card, 128 on 141 GB."""
    import exact_attention_batch as e
    assert e.joint_length("JiT-B/16", 2) == 544
    assert e.score_bytes_per_image("JiT-B/16", 2) == 12 * 12 * 544 ** 2 * 8
    assert e.exact_attention_batch("JiT-B/16", 2, 80 * 2**30) == 64
    assert e.exact_attention_batch("JiT-B/16", 2, 141 * 2**30) == 128
    assert e.exact_attention_batch("JiT-B/16", 1, 80 * 2**30) == 128     # JiT alone fits at 128


def _gpu_sh(tmp_path, *args, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "OUT": str(tmp_path), **(env_extra or {})}
    res = subprocess.run(["bash", str(BENCH / "gpu.sh"), *args], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout[res.stdout.index("### summary"):]


def test_gpu_sh_every_stage_reported_when_all_fail(tmp_path):
    """A stage that fails does not stop the others: with a Python that always fails, every stage is
    still run and listed as FAILED in the summary."""
    summary = _gpu_sh(tmp_path, "--dry", env_extra={"PYTHON": "false"}, timeout=120)
    lines = [ln.strip() for ln in summary.splitlines()[1:] if ln.strip()]
    assert len(lines) == 8 and all(ln.startswith("FAILED(1)") for ln in lines), summary


@pytest.mark.slow
def test_gpu_sh_dry_runs_every_stage(tmp_path):
    """`gpu.sh --dry` runs every stage on the CPU at a tiny size (~1 min of CPU) and writes each JSON."""
    summary = _gpu_sh(tmp_path, "--dry")
    lines = [ln.strip() for ln in summary.splitlines()[1:] if ln.strip()]
    assert len(lines) == 8 and all(ln.startswith("ok") for ln in lines), summary
    for name in ("flops", "train_b16", "train_vco_b16", "train_vco_b16_exact", "sample_b16", "levers",
                 "train_vco_h16", "train_b16_compile"):
        assert (tmp_path / f"{name}.json").is_file(), name


def test_bench_feature_cache_tiny(tmp_path):
    out_json = tmp_path / "cache.json"
    _run("bench_feature_cache.py", "--batch", "2", "--cache-images", "2", "--repeats", "1", "--json", str(out_json))
    parts = json.loads(out_json.read_text())["per_image_ms"]
    assert set(parts) == {"keys", "find", "gather", "total"} and parts["total"] > 0


def test_encoder_precision_tiny(tmp_path):
    out_json = tmp_path / "precision.json"
    _run("encoder_precision.py", "--images", "4", "--skip-dinov2", "--json", str(out_json))
    (row,) = json.loads(out_json.read_text())
    assert row["fp32_switch_exact_under_autocast"] and 0 < row["target_rel_err_median"] < 0.5


def test_fusion_variants_table(capsys):
    """benchmarks/fusion_variants.py: every architecture variant counted; V-Co-B/16 (dual) is the paper's 260M."""
    import fusion_variants
    assert fusion_variants.main(["--no-timing"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"jit", *fusion_variants.FUSIONS}
    assert "260,666,112" in rows["dual"] and "131,123,712" in rows["jit"] and "1,424,024" in rows["dual"]


@pytest.mark.slow      # ~15-30 s: a V-Co start-up (encoder, statistics), 6 steps and a sampling call
def test_profile_embedded_run_tiny():
    """The per-phase profile of one embedded V-Co run: every phase of the step and of the evaluation is reported."""
    out = _run("profile_embedded_run.py", "--preset", "vco-tiny", "--steps", "6", "--num-images", "4",
               "--metrics", "none", "vco.calib_images=64", "sample.steps=2")
    for phase in ("feature target", "network forward", "hybrid loss forward", "backward", "training loop",
                  "one step, median", "eval: sampler", "eval: total", "load average"):
        assert phase in out, out
