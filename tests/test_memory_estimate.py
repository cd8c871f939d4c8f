"""benchmarks/memory_estimate.py on the tiny config: the JSON it writes, and the counting it rests on."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import memory_estimate as me  # noqa: E402 (benchmarks/ is put on sys.path above)


def test_saved_counter_dedupes_storages_and_skips_parameters():
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    counter = me.SavedCounter({w.untyped_storage().data_ptr()})
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        y = x @ w              # saves x (and w: excluded, resident)
        z = x[:2] * x[2:]      # two views of x's storage: already counted
        (y.sum() + z.sum()).backward()
    assert counter.by_tag() == {"fixed": x.numel() * 4}


def test_linear_fit():
    f = me.fit({(1, 1): 10.0, (2, 1): 13.0, (1, 2): 14.0})
    assert (f.c0, f.k, f.d) == (3.0, 3.0, 4.0) and f(5, 2) == 3 + 15 + 8
    g = me.fit({(1, 0): 5.0, (2, 0): 7.0})
    assert g(10, 0) == 3 + 20


def test_memory_estimate_tiny(tmp_path, one_thread, capsys):
    out_json = tmp_path / "memory.json"
    assert me.main(["--models", "JiT-T/4", "--batches", "4,8", "--encoder-blocks", "1", "--no-validate",
                    "--measure-ckpt", "jit:JiT-T/4,vco:JiT-T/4", "--threads", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "resident" in printed and "fits" in printed
    data = json.loads(out_json.read_text())
    rows = data["rows"]
    assert {(r["model"], r["batch"], r["ckpt"]) for r in rows} == {
        (m, b, c) for m in ("JiT-T/4", "V-Co-T/4") for b in (4, 8) for c in (False, True)}
    a = data["assumptions"]
    for r in rows:
        for key in ("resident_gib", "activations_gib", "total_gib", "fits", "capacity_gib", "resident_parts_gib",
                    "activation_parts_gib"):
            assert key in r, key
        assert r["total_gib"] == pytest.approx(r["resident_gib"] + r["activations_gib"] * (1 + a["allowance"])
                                               + a["context_gib"])
        assert r["fits"] == (r["total_gib"] <= r["capacity_gib"])
        assert r["activations_gib"] > 0 and r["resident_gib"] > 0
    by = {(r["model"], r["batch"], r["ckpt"]): r for r in rows}
    for model in ("JiT-T/4", "V-Co-T/4"):
        off, on = by[(model, 8, False)], by[(model, 8, True)]
        assert on["activations_gib"] < off["activations_gib"]               # checkpointing lowers activations
        assert on["resident_gib"] == off["resident_gib"]
        assert by[(model, 8, False)]["activations_gib"] > by[(model, 4, False)]["activations_gib"]
    vco = by[("V-Co-T/4", 8, False)]
    assert vco["activation_parts_gib"]["encoder"] > 0                           # the DINOv2 pass of the hybrid loss
    assert vco["resident_parts_gib"]["encoder"] > 0.3                           # DINOv2-B/14 fp32, 86.6 M params
    assert vco["activation_parts_gib"]["drop"] == 1                             # ceil(0.1 * 8) dropped samples
    # the checkpointed forward, measured, agrees with its derivation from the plain run
    for c in data["ckpt_measured_vs_derived"]:
        assert c["measured_gib"] == pytest.approx(c["derived_gib"], rel=0.02)
    # the batch-independent bytes of a block are its bf16 weight copies (autocast's casts, saved for backward)
    for m in data["models"]:
        for kind in m["block_kinds(in_context,dropout)"].values():
            assert kind["intercept_bytes"] == pytest.approx(m["bf16_weight_bytes_per_block"], rel=0.05)


def test_dropout_kinds_tiny(one_thread, monkeypatch):
    """With dropout the shallow blocks save 1-byte masks; without dropout a block saves exactly that minus them."""
    from dataclasses import replace
    est = me.Estimator(me.parse_args(["--threads", "1"]))
    base = me.get_model_config("JiT-T/4")
    fits = {}
    for p in (0.2, 0.0):
        monkeypatch.setattr(me, "full_config", lambda name, net, p=p: replace(base, proj_drop=p))
        fits[p] = est.measure("JiT-T/4", "jit", autocast=True, ckpt=False)["fits"]
    T, K, h, hidden = base.grid ** 2, base.in_context_len, base.hidden_size, base.mlp_hidden
    for ic, tokens in ((False, T), (True, T + K)):
        assert fits[0.2]["masks"][(ic, True)].k == tokens * (h + hidden)   # proj_drop (h) + SwiGLU dropout, bool
        derived, measured = fits[0.2]["blocks"][(ic, False)], fits[0.0]["blocks"][(ic, False)]
        assert (derived.c0, derived.k) == (measured.c0, measured.k)
