"""Seeded, deterministic procedural chest radiographs: the study's embedded default data.

``generate(cfg, out_dir)`` writes DICOM/JPEG images, lesion masks and a manifest for four sites
mirroring the thesis' datasets (internal, temporal, external1 ~ MIMIC-CXR-JPG, external2 ~ CheXpert);
``plot_gallery`` draws every finding beside the same patient's normal film, lesion outlined;
``plot_real_comparison`` puts synthetic normals next to real normal films at the same size.
"""

from scxnn.synth.build import GENERATOR_VERSION, fingerprint, generate, plan, render
from scxnn.synth.gallery import plot_gallery, plot_real_comparison, read_image

__all__ = ["generate", "plot_gallery", "plot_real_comparison", "read_image", "plan", "render", "fingerprint", "GENERATOR_VERSION"]
