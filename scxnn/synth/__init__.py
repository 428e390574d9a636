"""Seeded, deterministic procedural chest radiographs: the study's embedded default data.

``generate(cfg, out_dir)`` writes DICOM/JPEG images, lesion masks and a manifest for four sites
mirroring the thesis' datasets (internal, temporal, external1 ~ MIMIC-CXR-JPG, external2 ~ CheXpert).
Its figures (every finding beside the same patient's normal film; synthetic next to real normals)
are drawn by :mod:`scxnn.gallery`.
"""

from scxnn.synth.build import GENERATOR_VERSION, fingerprint, generate, plan, render

__all__ = ["generate", "plan", "render", "fingerprint", "GENERATOR_VERSION"]
