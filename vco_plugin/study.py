"""V-Co's study (paper §4 and Tables 1-4): JiT, V-Co, V-Co without each of its ingredients (the architecture
of Table 1 first), and JiT widened to V-Co's parameter count (Table 1's control; its reference is JiT, its
ingredient the width).

Every ablation arm is V-Co with exactly one ingredient replaced (``jit study`` checks the resolved
configs); ``paper`` is the direction the paper reports for the arm against V-Co (V-Co, arXiv 2603.16792,
B/16 guided FID: recipe 2.52; Table 1's architectures without guidance) and ``paper_note`` the figures.
Registered through ``jit_studies``; the embedded studies run 300 steps per run (recognisable samples) and
``--quick`` 150 (wall times on an idle 2-core machine, docs/embedded-comparison.md §4):

- ``vco-tiny``       13 arms x 3 seeds on the embedded Fashion-MNIST: about 2.1 h, ``--quick`` about 1.1 h;
- ``vco-tiny-pair``  JiT vs V-Co, the demo (``scripts/demo.sh``): about 16.5 min from a fresh clone, runs about
                     13 min (``--quick``: 11 min measured);
- ``vco-b16``        the same arms at ImageNet 256 / B/16 on SLURM (``jit slurm study vco-b16``).
"""
from __future__ import annotations

from jit_core.study import Arm, Study

VCO = "V-Co"


ARCHITECTURES = (   # vco.fusion, arm name, Table 1's B/16 FID-50K without guidance (fully dual-stream: 8.86)
    ("add", "direct addition", "15.15"),
    ("channel_concat", "channel concat", "14.33"),
    ("token_concat", "token concat", "14.70"),
)


def architecture_arms(vco_preset: str) -> tuple[Arm, ...]:
    """Ingredient 1, the architecture: V-Co with the fully dual-stream net replaced by each single-stream fusion
    of Table 1 (``vco.fusion``; docs/co-denoising-architectures.md). Where no attention spans the streams the
    structured null branch zeroes the feature input instead of masking (vco_plugin/null_branch.py), so the arm's
    one config change is ``vco.fusion``."""
    return tuple(Arm(f"arch: {name}", vco_preset, overrides=(f"vco.fusion={fusion}",), reference=VCO,
                     ingredient=f"fully dual-stream -> {name}", changes=("vco.fusion",), paper="worse",
                     paper_note=f"{name} {fid} vs fully dual-stream 8.86, B/16 FID-50K without guidance (Table 1; "
                                "widened JiT 22.67, 261M)")
                 for fusion, name, fid in ARCHITECTURES)


def ablation_arms(vco_preset: str, repa_options: tuple[str, ...] = ()) -> tuple[Arm, ...]:
    """V-Co without each ingredient, in the paper's order (architecture, null branch, auxiliary loss, calibration).

    REPA is the example plugin with the paper's table3_vco_repa weight 0.1, after block 4 of 12 (0-based),
    plus ``repa_options``. The paper's REPA ablation aligns to the DINOv2 tokens V-Co co-denoises; on the
    embedded data those are the stride-8 EfficientNet-Lite0 stage of V-Co's stream
    (``repa.encoder=efficientnet_lite0_s8``), and block 1 of the tiny model's 4 is the same relative depth.
    """
    def arm(name, ingredient, overrides, changes, paper, note, plugins=()):
        return Arm(name, vco_preset, overrides=tuple(overrides), plugins=tuple(plugins), reference=VCO,
                   ingredient=ingredient, changes=tuple(changes), paper=paper, paper_note=note)
    return (
        *architecture_arms(vco_preset),
        arm("null: label drop", "structured null -> plain label drop", ["vco.null_branch=label_drop"],
            ["vco.null_branch"], "worse", "no exact row; every other null branch is worse: 3.59-6.69 vs 3.18 guided"),
        arm("null: input dropout", "structured null -> input dropout", ["vco.null_branch=input_dropout"],
            ["vco.null_branch"], "worse", "input dropout 6.69 vs 3.18 guided"),
        arm("aux: none", "hybrid loss -> none", ["vco.drift_coef=0"], ["vco.drift_coef"], "worse",
            "no number recovered; the paper reports the hybrid loss as its best auxiliary loss"),
        arm("aux: REPA", "hybrid loss -> REPA alignment", ["vco.drift_coef=0", "repa.coef=0.1", *repa_options],
            ["vco.drift_coef", "plugins", "repa.*"], "worse", "REPA 3.14 vs hybrid 2.52 guided",
            plugins=("repa",)),
        arm("calib: none", "RMS calibration -> none", ["vco.calibration=none"], ["vco.calibration"], "",
            "table4_run_a as released (standardised, alpha = 1): number not recovered"),
        arm("calib: time shift", "RMS calibration -> noise-schedule shift", ["vco.calibration=time_shift"],
            ["vco.calibration"], "worse", "table4_run_b as released (alpha kept on the target, prediction at the "
            "unshifted time): 2.93 vs RMS 2.52 guided"),
        arm("calib: time shift (corrected)", "RMS calibration -> noise-schedule shift, run_b's defect corrected",
            ["vco.calibration=time_shift_corrected"], ["vco.calibration"], "",
            "alpha = 1 and the shifted time everywhere; not a run of the paper"),
    )


def widened_arm(preset: str, overrides: tuple[str, ...] = ()) -> Arm:
    """JiT widened to V-Co's trainable parameter count (``preset``, or ``overrides`` on the reference's preset):
    the control that shows V-Co's gain is not just its doubled parameters (paper Table 1)."""
    return Arm("JiT widened", preset, overrides=overrides, reference="JiT", ingredient="parameters: width -> V-Co's count",
               changes=("model",), paper="worse",
               paper_note="JiT-B/16 widened 22.67 (261M) vs V-Co 8.86 (260M), FID-50K without guidance (Table 1)")


SHOWS = ("Shown: each arm's mean over its seeds with a 95 % interval of that mean, and whether its difference "
         "from V-Co is outside the seed-to-seed noise. Not shown: the paper's ImageNet ranking (this is 28x28 "
         "Fashion-MNIST at 32 px, a few hundred CPU steps, an EfficientNet-Lite0 stream instead of DINOv2, and a "
         "Frechet distance in a small classifier's feature space, not FID); an arm 'within noise' is not shown to "
         "be equal, only not shown to differ at this budget and number of seeds.")


def tiny_studies() -> dict[str, Study]:
    # 300 steps: samples are recognisable (classifier accuracy 64-68 %; 20-30 % at 150 steps, the --quick look)
    budget, quick = ("train.max_steps=300",), ("train.max_steps=150",)
    jit = Arm("JiT", "tiny", paper="worse", paper_note="JiT-B/16 3.66 (600 ep) vs V-Co-B/16 2.52 (200 ep)")
    vco = Arm(VCO, "vco-tiny", paper="", paper_note="reference: the recipe (8 class groups of 8 per step)")
    pair = (Arm("JiT", "tiny"), Arm(VCO, "vco-tiny", paper="better",
                                    paper_note="V-Co-B/16 2.52 (200 ep) vs JiT-B/16 3.66 (600 ep)"))
    return {
        "vco-tiny": Study("vco-tiny", "JiT, V-Co, V-Co without each ingredient and JiT widened to V-Co's size on the "
                          "embedded Fashion-MNIST "
                          "(tiny: JiT-S/4 32 px, 300 steps of 64 images, --quick 150, EfficientNet-Lite0 features)",
                          (jit, vco, *ablation_arms("vco-tiny", ("repa.encoder=efficientnet_lite0_s8",
                                                                                  "repa.block=1")),
                           widened_arm("jit-tiny-wide")),
                          baseline=VCO, seeds=(0, 1, 2), num_images=200,
                          overrides=budget, quick=quick, what_it_shows=SHOWS),
        "vco-tiny-pair": Study("vco-tiny-pair", "JiT vs V-Co on the embedded Fashion-MNIST (the demo)", pair,
                               baseline="JiT", seeds=(0, 1, 2), num_images=150, overrides=budget, quick=quick,
                               what_it_shows=SHOWS.replace("from V-Co", "from JiT")),
    }


def imagenet_studies() -> dict[str, Study]:
    jit = Arm("JiT", "vco-b16", overrides=("plugins=none",), paper="worse",
              paper_note="JiT-B/16 3.66 (600 ep) vs V-Co-B/16 2.52 (200 ep)")
    vco = Arm(VCO, "vco-b16", paper_note="the recipe, 2.52 guided (200 ep)")
    return {"vco-b16": Study("vco-b16", "V-Co's ablations at B/16, ImageNet 256 (needs data.path and DINOv2 "
                             "weights; run with `jit slurm study vco-b16`)", (jit, vco, *ablation_arms("vco-b16"),
                              widened_arm("vco-b16", ("plugins=none", "model=JiT-B/16-wide"))),
                             baseline=VCO, seeds=(0,), num_images=50000,
                             what_it_shows=SHOWS.split(" Not shown")[0])}
