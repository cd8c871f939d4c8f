"""Official JiT / V-Co checkpoints: their key layout and ``.pth`` I/O (``layout.py``) and what network a
state dict describes (``infer.py``)."""
