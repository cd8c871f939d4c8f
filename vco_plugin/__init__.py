"""V-Co (Lin et al., arXiv 2603.16792) as a jit_core plugin, entirely through jit_core's hooks.

- ``features``: frozen encoders (DINOv2, EfficientNet-Lite0) -> feature-stream targets and embeddings;
- ``calibration``: feature statistics and the RMS factor (ingredient 4), ``jit vco calibrate``;
- ``null_branch``: joint drop with the pixel->feature attention block (ingredient 2);
- ``drift_loss``: the perceptual-drifting hybrid loss (ingredient 3); ``batches``: class-balanced batches;
- ``plugin``: the hook implementations (entry point ``vco``), which add the feature stream (ingredient 1).
"""
