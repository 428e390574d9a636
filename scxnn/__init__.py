"""SCXNN: Strictly Chest X-ray Normal Network, a reproducible re-implementation.

Data flows one way: DICOM -> PNG cache + manifest -> dataset -> 13 per-finding models -> logits table
-> SVM -> tables and figures. Each numbered notebook in ``notebooks/`` drives one step through a thin
module of this package.
"""

__version__ = "0.1.0"
