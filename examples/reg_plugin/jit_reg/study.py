"""REG's study on the embedded data: JiT vs REG vs V-Co, 3 seeds each (``jit study reg-tiny``).

Every arm is the core's ``tiny`` run (JiT-S/4 at 32 px on Fashion-MNIST, batch 64) with the same
budget; REG and V-Co use the offline EfficientNet-Lite0 encoder. The report gives each arm's mean over
its seeds with a 95 % interval and says whether it differs from JiT outside the seed-to-seed noise.
"""
from __future__ import annotations

from jit_core.study import Arm, Study

BUDGET = ("train.max_steps=300",)   # where JiT's samples are recognisable on the embedded data (README)

SHOWS = ("Shown: each arm's mean over its seeds with a 95 % interval of that mean, and whether its difference "
         "from JiT is outside the seed-to-seed noise. Not shown: REG's ImageNet result (this is Fashion-MNIST at "
         "32 px, a few hundred CPU steps, an EfficientNet-Lite0 pooled token instead of DINOv2's CLS token, and a "
         "Frechet distance in a small classifier's feature space, not FID); an arm 'within noise' is not shown to "
         "be equal, only not shown to differ at this budget and number of seeds.")


def studies() -> dict[str, Study]:
    arms = (
        Arm("JiT", "tiny"),
        Arm("REG", "reg-tiny", reference="JiT", ingredient="+ the encoder's global token as a co-denoised stream",
            changes=("plugins", "reg.*"), paper="better",
            paper_note="REG improves SiT-XL/2 + REPA's FID at equal steps (arXiv 2507.01467, Table 2); not a JiT run"),
        Arm("V-Co", "vco-tiny", reference="JiT", ingredient="+ V-Co (feature stream, null branch, loss, calibration)",
            changes=("plugins", "vco.*"), paper="better", paper_note="V-Co-B/16 2.52 (200 ep) vs JiT-B/16 3.66 (600 ep)"),
    )
    return {"reg-tiny": Study("reg-tiny", "JiT vs REG (global token co-denoised) vs V-Co on the embedded "
                              "Fashion-MNIST (tiny: JiT-S/4 32 px, 300 steps of 64 images, EfficientNet-Lite0)",
                              arms, baseline="JiT", seeds=(0, 1, 2), num_images=200, overrides=BUDGET,
                              what_it_shows=SHOWS)}
