"""Evaluation: ``jit evaluate`` (``evaluate.py``), FID/IS/P-R via torch-fidelity (``fid.py``), the embedded
datasets' classifier metric (``classifier.py``) and the ``jit compare`` report (``report.py``)."""
