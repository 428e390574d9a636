"""SCXNN: Strictly Chest X-ray Normal Network, a reproducible re-implementation.

Data flows one way: DICOM -> PNG cache + manifest -> dataset -> 13 per-finding models -> logits table
-> SVM -> tables and figures. Each numbered notebook in ``notebooks/`` drives one step through a thin
module of this package.

The code is a house of floors, lowest first (:data:`LAYERS`). A module imports only from its own
floor or the floors below it, inside functions too (``tests/test_layout.py`` checks every import):

1. foundation: utils, config, thesis, metrics, plausibility, hardware, distributed, html_report, pipeline, launch, weights
2. data: dicom, data, pixels, batch, adapters, synth, sources, dataset, labels
3. models: models, losses, checkpoints
4. training: loop, pretrain, train
5. inference: inference, ort, ood, monitor
6. ensemble and evaluation: ensemble, evaluation, cam, localisation, variants, trained_run
7. reports and commands' logic: reports, figures, gallery, training_figures, study_tables, external, transfer, certify, predict, bench
8. command line: cli, __main__
"""

__version__ = "0.1.0"

LAYERS = (
    ("foundation", ("utils", "config", "thesis", "metrics", "plausibility", "hardware", "distributed", "html_report", "pipeline", "launch", "weights")),
    ("data", ("dicom", "data", "pixels", "batch", "adapters", "synth", "sources", "dataset", "labels")),
    ("models", ("models", "losses", "checkpoints")),
    ("training", ("loop", "pretrain", "train")),
    ("inference", ("inference", "ort", "ood", "monitor")),
    ("ensemble and evaluation", ("ensemble", "evaluation", "cam", "localisation", "variants", "trained_run")),
    ("reports and commands' logic", ("reports", "figures", "gallery", "training_figures", "study_tables", "external", "transfer", "certify", "predict", "bench")),
    ("command line", ("cli", "__main__")),
)
