"""Seeded, deterministic procedural chest radiographs: the study's embedded default data.

``generate(cfg, out_dir)`` writes DICOM/JPEG images, lesion masks and a manifest for four sites
mirroring the thesis' datasets (internal, temporal, external1 ~ MIMIC-CXR-JPG, external2 ~ CheXpert);
``plot_gallery`` draws one example per finding with its mask outlined.
"""

from scxnn.synth.build import GENERATOR_VERSION, fingerprint, generate, plan, render
from scxnn.synth.gallery import plot_gallery, read_image

__all__ = ["generate", "plot_gallery", "read_image", "plan", "render", "fingerprint", "GENERATOR_VERSION"]
