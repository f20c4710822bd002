"""The ELFATT paper's figures and claims (arXiv 2501.06098), in one place: what
the report, the notebooks and the targets table compare the measurements with.
Numbers here are the paper's (or targets this suite set itself, labelled so),
never measurements.
"""
from __future__ import annotations

# The paper's names for presets of this suite (its baselines, measured here under these names).
PAPER_NAMES = {"vanilla_lepe": "GLOBAL (vanilla attention + LePE, the paper's VaniATT)",
               "elfatt_local": "LOCAL (every head in stripes, with LePE)",
               "elfatt_global": "every head global (efficient attention + LePE)",
               "sdpa_flash": "FlashAttention-2 (torch SDPA's flash backend)"}

HIGH_RES = 1024  # "high resolution" in the claims: an image side of at least this many pixels

# Speed claims, as bands of speedup over a baseline (the collect's speedup_vs_<key>):
# (low, high, legend text, colour of the shaded band in figures).
BANDS = {"vanilla": (4.0, 7.0, "paper's claim: 4-7x over vanilla attention (GLOBAL)", "gold"),
         "flash": (2.0, 3.0, "paper's claim: 2-3x over vanilla with FlashAttention-2", "lightskyblue")}

# Every claim, with what this suite measures for it (the notebook's table).
CLAIMS = (
    ("ELFATT vs vanilla softmax attention", "4-7x faster", "high-resolution vision tasks, GPU",
     "speedup_vs_vanilla of ELFATT (baseline: vanilla + LePE, the paper's VaniATT) at >= HIGH_RES px"),
    ("ELFATT vs vanilla, both with FlashAttention-2", "2-3x faster", "same",
     "speedup_vs_flash (baseline: torch SDPA pinned to the flash backend = FlashAttention-2)"),
    ("ELFATT vs FlashAttention-2 on Long Range Arena", "1.2-2.3x faster", "some LRA tasks",
     "only the train_proxy rows (pathfinder/listops proxies), if present"),
    ("ELFATT vs vanilla global attention on edge GPUs", "1.6-2.0x faster", "Jetson Nano / AGX Orin",
     "only rows from a Jetson device, if present"),
    ("ImageNet-1K top-1", "CSWin-T-ELFATT 83.1, Swin-T-ELFATT 82.7", "trained models",
     "not measured (no ImageNet training here)"),
)
LRA_BAND = (1.2, 2.3)

# Images per second the paper reports on an NVIDIA H20 (224 px, batch 512, mixed precision),
# without / with FlashAttention-2 (experiment paper_models_gpu puts measurements beside them).
MODEL_FPS = {"swin_t": (2884, 3159), "cswin_t": (2603, 2856)}

# Dense prediction, batch 1, images/s as the paper prints them for its two ELFATT backbones,
# without / with FlashAttention-2 (the whole detector or segmenter, decoder included: the suite
# times the backbone only, so its numbers are an upper bound on these; experiment paper_dense).
DENSE_FPS = {"ADE20K (UperNet), 512x2048": ((28, 32), (34, 38)),
             "COCO (Mask R-CNN), 1280x800": ((30, 33), (39, 45))}
