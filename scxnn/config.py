"""Typed, frozen study configuration loaded from ``params/*.yaml``.

Resolution order: ``params/defaults.yaml`` -> the profile's ``extends`` chain -> the profile ->
overrides (papermill parameters or ``--set key=value`` on the CLI). Every key is checked against the
dataclasses below: an unknown key or a bad value raises :class:`ConfigError` naming the key and the
file (or ``override``) it came from.

The resolved config is written next to every artifact (:func:`save_resolved`) and embedded in
checkpoints (:meth:`Config.to_dict`), so any result can be traced back to the exact settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from scxnn.utils import atomic_write_text, sha256_text

DEFAULTS_FILE = "defaults.yaml"
RESOLVED_NAME = "config.resolved.yaml"
BACKBONES = ("densenet121", "densenet169", "resnet50", "vgg16", "googlenet", "efficientnet_b2")
RISK_GROUPS = ("critical", "urgent", "non_urgent", "cardiomegaly")
# The synthetic generator's sites (scxnn.synth.sites): the training hospital, then the evaluation sites.
SYNTH_SITES = ("internal", "temporal", "external1", "external2")
# Sections a variant may change (not data, paths or findings: variants compare methods on one dataset).
VARIANT_SECTIONS = ("seed", "preprocess", "model", "train", "ensemble")
# Sections that decide a trained pipeline's results; their hash names a variant's cache folder.
RESULT_SECTIONS = ("seed", "findings", "unseen_findings", "data", "preprocess", "model", "train", "ensemble")


def result_sections(cfg: "Config") -> tuple[str, ...]:
    """:data:`RESULT_SECTIONS`, plus ``pretrain`` when the models start from the study trunk (its
    settings then decide the results too)."""
    return RESULT_SECTIONS + (("pretrain",) if cfg.model.pretrained == "study" else ())


class ConfigError(ValueError):
    """A params file or override is invalid. The message names the key and its source."""


# --------------------------------------------------------------------------- schema
# No defaults here on purpose: params/defaults.yaml is the single place where default values live,
# and a key missing from it is an error rather than a silent fallback.


@dataclass(frozen=True)
class Paths:
    data: str  # generated images, PNG cache and manifests; "{profile}" is expanded
    runs: str  # checkpoints, logits, fitted SVMs
    reports: str  # tables/, figures/, executed/
    shared: str  # read-only material beside the project (real samples, thesis tables)


@dataclass(frozen=True)
class Data:
    source: Literal["synth", "manifest", "adapter"]
    manifest: str | None  # used when source == "manifest"
    adapter: str | None  # used when source == "adapter": a name in scxnn.adapters (kermany, nih, ...)
    root: str | None  # the adapter's local copy of the dataset (relative paths: to the project root)
    scale: float  # fraction of the thesis' Table 1 counts to generate
    min_per_finding: int  # floor per finding after scaling, so rare findings still get images
    synth_size: int  # side of the generated radiographs in pixels
    eval_scale: float  # fraction of the thesis' temporal / external set sizes to generate
    synth_difficulty: float  # 1.0: realistic lesion size/contrast mix; < 1 easier, > 1 subtler
    workers: int  # processes for generation and preprocessing; 0: all cores
    split: tuple[float, float, float]  # hard-label train / val / test, by patient
    # Synthetic sites generated (synth only): the shipped trunk's draw is the internal site alone.
    sites: tuple[str, ...]
    # Synthetic only: extra hard-labelled patients, validation only, until the val split holds at
    # least this many abnormal patients (the certified 99% bound needs >= 368 without a miss,
    # >= 555 with one). 0: none. Drawn after every other film, so the rest are unchanged.
    val_min_abnormal_patients: int

    def __post_init__(self) -> None:
        _check(0 < self.scale <= 1, "scale", "must be in (0, 1]")
        _check(len(self.sites) >= 1 and set(self.sites) <= set(SYNTH_SITES) and len(set(self.sites)) == len(self.sites),
               "sites", f"must be distinct names among {list(SYNTH_SITES)}")
        _check(self.val_min_abnormal_patients >= 0, "val_min_abnormal_patients", "must be >= 0")
        _check(self.min_per_finding >= 1, "min_per_finding", "must be >= 1")
        _check(self.synth_size >= 64, "synth_size", "must be >= 64")
        _check(0 < self.eval_scale <= 1, "eval_scale", "must be in (0, 1]")
        _check(self.synth_difficulty > 0, "synth_difficulty", "must be > 0")
        _check(self.workers >= 0, "workers", "must be >= 0")
        _check(abs(sum(self.split) - 1) < 1e-6 and min(self.split) > 0, "split", "must be 3 positive fractions summing to 1")
        _check(self.source != "manifest" or bool(self.manifest), "manifest", "is required when source is 'manifest'")
        _check(self.source != "adapter" or bool(self.adapter and self.root), "adapter", "and data.root are required when source is 'adapter'")


@dataclass(frozen=True)
class Preprocess:
    clip_percentiles: tuple[float, float]
    contrast: Literal["clahe", "histeq", "none"]
    clahe_clip_limit: float
    clahe_tiles: int
    size: int  # square side after padding and resizing
    dilation_unit: Literal["fraction", "mm"]
    dilation: float  # kernel size, as a fraction of the image side or in millimetres
    voi_lut: bool  # apply the DICOM VOI LUT / window before the percentile clip
    min_side: int  # px: shorter sides below this are not films (capped at size); scxnn.plausibility
    max_aspect: float  # long side / short side above this is not a chest film
    max_megapixels: float  # per-file memory budget: larger images are refused before decoding

    def __post_init__(self) -> None:
        _check(self.min_side >= 1, "min_side", "must be >= 1")
        _check(self.max_aspect >= 1, "max_aspect", "must be >= 1")
        _check(self.max_megapixels > 0, "max_megapixels", "must be > 0")
        lo, hi = self.clip_percentiles
        _check(0 <= lo < hi <= 100, "clip_percentiles", "must satisfy 0 <= low < high <= 100")
        _check(self.clahe_clip_limit > 0, "clahe_clip_limit", "must be > 0")
        _check(self.clahe_tiles >= 1, "clahe_tiles", "must be >= 1")
        # Five stride-2 stages in every backbone: the decoder's skips line up only at multiples of 32.
        _check(self.size >= 64 and self.size % 32 == 0, "size", "must be a multiple of 32 and >= 64")
        _check(self.dilation >= 0, "dilation", "must be >= 0")


@dataclass(frozen=True)
class Model:
    backbone: Literal["densenet121", "densenet169", "resnet50", "vgg16", "googlenet", "efficientnet_b2"]
    pretrained: str  # "imagenet", "trunk" (the shipped one, scxnn/weights), "study" (the profile's own, scxnn.pretrain), "none", or a path
    num_classes: Literal[2, 3]  # 3: normal / target / others (thesis); 2: normal / target
    decoder: Literal["reconstruction", "segmentation", "none"]
    decoder_widths: tuple[int, ...]  # U-Net decoder channels per level, deepest (/16) to input size (/1)
    dilate_mask: bool
    recon_weight: float  # lambda in CE + lambda * MSE

    def __post_init__(self) -> None:
        _check(self.recon_weight >= 0, "recon_weight", "must be >= 0")
        _check(len(self.decoder_widths) == 5 and all(w >= 1 for w in self.decoder_widths), "decoder_widths",
               "must be 5 positive channel counts, one per level from /16 to the input size")
        _check(bool(self.pretrained), "pretrained", "must be 'imagenet', 'trunk', 'study', 'none' or a path")


@dataclass(frozen=True)
class Pretrain:
    """The study trunk (``model.pretrained: study``; :mod:`scxnn.pretrain`): a multi-label classifier
    over the findings, pretrained once per backbone on the training films."""

    epochs: int
    images_per_epoch: int  # class-balanced draws per epoch
    lr: float  # peak learning rate of the cosine schedule
    # True: a U-Net decoder (model.decoder_widths) also reconstructs every lesion of the film (the
    # image times the union of its dilated masks; loss BCE + model.recon_weight x MSE), and the
    # trunk keeps the decoder; False: the multi-label classifier alone, encoder only.
    masks: bool

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.images_per_epoch >= 1, "images_per_epoch", "must be >= 1")
        _check(self.lr > 0, "lr", "must be > 0")


@dataclass(frozen=True)
class Train:
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    max_epochs: int
    plateau_factor: float  # learning rate multiplier on a plateau
    plateau_patience: int  # epochs without improvement before the learning rate drops
    lr_floor: float  # stop once lr < lr_floor and plateau_patience epochs pass without improvement
    stage2_epochs: int  # weak-label epochs (decoder frozen); 0 skips stage 2
    stage2_unfreeze_encoder: bool
    # Films of stage 1 and of validation: hard-label ones (with lesion masks; the thesis), or any
    # (weak-label-only data such as Kermany's, trained as the thesis' "classification only" variant).
    stage1_labels: Literal["hard", "any"]
    imbalance: Literal["sampler", "class_weights", "none"]
    augment: bool
    num_workers: int
    channels_last: bool
    bf16: Literal["auto", "on", "off"]
    compile: bool
    max_images_per_epoch: int  # training images drawn per epoch (stage 1 and 2); 0: all of them
    max_val_images: int  # validation films scored per epoch for model selection (all target films kept); 0: all
    # Augmentation (training only; image and lesion mask together). Each transform fires with augment_p.
    augment_p: float  # probability of each augmentation below
    augment_shift: float  # max translation, fraction of the image side
    augment_rotate: float  # max rotation, degrees
    augment_gamma: tuple[float, float]  # gamma range, e.g. [0.8, 1.2]
    augment_sharpen: float  # max sharpening alpha (0: off)
    augment_blur: int  # max Gaussian blur kernel, odd pixels (< 3: off)
    augment_noise: float  # max Gaussian noise std, fraction of full scale (0: off)
    # Per-finding budgets: finding -> {train key: value}, applied over the keys above for that
    # finding's model only (Config.for_finding), e.g. {nodule: {max_epochs: 20}}. Variants keep it,
    # unless variants.protocol sets train.by_finding (a reduced protocol must: see Config).
    by_finding: dict[str, dict[str, Any]]

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.max_epochs >= 1, "max_epochs", "must be >= 1")
        _check(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        _check(self.plateau_patience >= 0, "plateau_patience", "must be >= 0")
        _check(0 <= self.lr_floor < self.lr, "lr_floor", "must be >= 0 and below lr")
        _check(self.stage2_epochs >= 0, "stage2_epochs", "must be >= 0")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        _check(self.max_images_per_epoch >= 0, "max_images_per_epoch", "must be >= 0 (0: all)")
        _check(self.max_val_images >= 0, "max_val_images", "must be >= 0 (0: all)")
        _check(0 <= self.augment_p <= 1, "augment_p", "must be in [0, 1]")
        _check(0 <= self.augment_shift < 0.5, "augment_shift", "must be in [0, 0.5)")
        _check(0 <= self.augment_rotate <= 180, "augment_rotate", "must be in [0, 180]")
        _check(0 < self.augment_gamma[0] <= self.augment_gamma[1], "augment_gamma", "must be [low, high] with 0 < low <= high")
        _check(0 <= self.augment_sharpen <= 1, "augment_sharpen", "must be in [0, 1]")
        _check(self.augment_blur >= 0, "augment_blur", "must be >= 0")
        _check(0 <= self.augment_noise < 1, "augment_noise", "must be in [0, 1)")
        keys = {f.name for f in fields(Train)} - {"by_finding"}
        for finding, over in self.by_finding.items():
            _check(isinstance(over, Mapping), "by_finding", f"{finding}: expected a mapping of train keys, got {over!r}")
            bad = sorted(str(k) for k in over if k not in keys)
            _check(not bad, "by_finding", f"{finding}: {bad} are not train keys; allowed: {', '.join(sorted(keys))}")
            try:  # the values too, now rather than when that finding's model starts training
                dataclasses.replace(self, **over, by_finding={})
            except _FieldError as e:
                raise _FieldError("by_finding", f"{finding}.{e.key}: {e.msg}") from None
            except TypeError:
                raise _FieldError("by_finding", f"{finding}: a value has the wrong type") from None


@dataclass(frozen=True)
class Ensemble:
    kernel: Literal["rbf", "linear", "poly", "sigmoid"]
    C: float
    class_weight: Literal["balanced", "none"]
    fit_on: Literal["validation"]  # the only choice: never test, temporal or external data
    sensitivity_target: float  # abnormal sensitivity the definite-normal threshold must keep

    def __post_init__(self) -> None:
        _check(self.C > 0, "C", "must be > 0")
        _check(0 < self.sensitivity_target < 1, "sensitivity_target", "must be in (0, 1)")


@dataclass(frozen=True)
class Evaluate:
    bootstrap: int  # resamples (of patients) for the 95% intervals
    ci: float
    batch_size: int  # images per forward pass when the models score a set (logits table)
    bf16: Literal["auto", "on", "off"]  # inference in bf16: auto = where the hardware has native bf16 (CPU too)
    ood_components: int  # PCA components of the out-of-distribution model (scxnn.ood)
    ood_quantile: float  # share of validation films under the OOD threshold (the rest are flagged)
    ood_fit_images: int  # training films step 03 scores to fit the OOD gate (a seeded sample; 0: all)
    # Batch-level shift rule of `scxnn predict` (scxnn.ood.batch_shift): a batch whose share of
    # OOD-flagged films is significantly above this tolerance gets no definite_normal at all.
    batch_ood_share: float
    batch_alpha: float  # one-sided binomial test level of that rule
    # The site monitor of `scxnn predict` (scxnn.monitor): Bernoulli CUSUMs over the stream of
    # screened films. monitor_arl: in-distribution films between false alarms, on average, at
    # least; monitor_shift_share: the flagged share its flagged chart detects fastest.
    monitor_arl: float
    monitor_shift_share: float
    # Published results on the profile's data to print beside ours (notebook 04), e.g.
    # {"Kermany et al. 2018": {accuracy: 0.928, sensitivity: 0.932, specificity: 0.901, auc: 0.968}}
    published: dict[str, dict[str, Any]]

    def __post_init__(self) -> None:
        _check(self.ood_components >= 1, "ood_components", "must be >= 1")
        _check(0 < self.ood_quantile < 1, "ood_quantile", "must be in (0, 1)")
        _check(self.ood_fit_images >= 0, "ood_fit_images", "must be >= 0 (0: every training film)")
        _check(0 < self.batch_ood_share < 1, "batch_ood_share", "must be in (0, 1)")
        _check(0 < self.batch_alpha < 0.5, "batch_alpha", "must be in (0, 0.5)")
        _check(self.monitor_arl >= 10, "monitor_arl", "must be >= 10 films")
        _check(0 < self.monitor_shift_share < 1, "monitor_shift_share", "must be in (0, 1)")
        _check(self.bootstrap >= 100, "bootstrap", "must be >= 100")
        _check(0 < self.ci < 1, "ci", "must be in (0, 1)")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        for name, metrics in self.published.items():
            _check(isinstance(metrics, Mapping), "published", f"{name!r} must map metric names to numbers")


@dataclass(frozen=True)
class Variants:
    """Whole-pipeline variants (13 models + SVM each) for the comparisons of Tables 4-8."""

    protocol: dict[str, Any]  # dotted overrides every variant shares (a reduced protocol in small profiles)
    runs: dict[str, dict[str, Any]]  # variant name -> dotted overrides of the method settings
    tables: dict[str, dict[str, str]]  # thesis table -> its row -> the variant that gives that row
    keep_models: bool  # keep a finished variant's checkpoints (about 110 MB per model, 13 per variant)
    max_films: int  # validation and test films each variant scores: a seeded sample of each (0: all)

    def __post_init__(self) -> None:
        _check(self.max_films >= 0, "max_films", "must be >= 0 (0: every validation and test film)")
        for table, rows in self.tables.items():
            unknown = sorted({v for v in rows.values() if v not in self.runs})
            _check(not unknown, "tables", f"{table}: rows name variants not in variants.runs: {unknown}")
        for name, over in {"protocol": self.protocol, **self.runs}.items():
            bad = [k for k in over if str(k).split(".")[0] not in VARIANT_SECTIONS]
            _check(not bad, "runs" if name != "protocol" else "protocol",
                   f"{name}: {bad} cannot vary; variants compare methods on the same data, so only {', '.join(VARIANT_SECTIONS)} settings may change")


_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # minutes, M:S, H:M:S, D-H[:M[:S]] (sbatch's forms)
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")


@dataclass(frozen=True)
class Resources:
    """What one job asks SLURM for (``make reports LAUNCH=slurm``; :mod:`scxnn.launch`)."""

    gpus: int  # GPUs per node (srun --gres=gpu:N)
    cpus: int  # CPU cores per node (srun --cpus-per-task); also the job's OMP_NUM_THREADS
    mem: str  # memory per node (srun --mem), e.g. "32G"; "": the cluster's default
    time: str  # wall-clock limit (srun --time), e.g. "4:00:00" or "2-00:00:00"
    nodes: int  # train only: nodes one model trains across (DDP under torchrun); 1 elsewhere
    procs: int  # train only: training processes per node (DDP ranks, one per GPU); 1 elsewhere

    def __post_init__(self) -> None:
        _check(self.gpus >= 0, "gpus", "must be >= 0")
        _check(self.cpus >= 1, "cpus", "must be >= 1")
        _check(self.nodes >= 1, "nodes", "must be >= 1")
        _check(self.procs >= 1, "procs", "must be >= 1")
        _check(self.gpus <= 1 or self.procs == self.gpus, "procs", "must equal gpus when a job has several GPUs (one DDP rank per GPU)")
        _check(self.mem == "" or bool(_SLURM_MEM.match(self.mem)), "mem", 'must be a size such as "32G" (K, M, G, T) or ""')
        _check(bool(_SLURM_TIME.match(self.time)), "time", 'must be a SLURM time such as "4:00:00", "90" (minutes) or "2-00:00:00"')


@dataclass(frozen=True)
class Launch:
    """How each job of the study is run on a SLURM cluster (``make reports LAUNCH=slurm``). A local
    run (the default) ignores this section, and no step's results depend on it: the Makefile's
    targets do not rerun when only these settings change."""

    partition: str  # srun --partition; "": the cluster's default
    account: str  # srun --account; "": none
    srun_args: tuple[str, ...]  # further srun options, e.g. ["--qos=normal", "--constraint=a100"]
    logs: str  # folder of the job logs (one per target, appended on each attempt); "{profile}" is expanded
    preprocess: Resources  # step 01: generation, the PNG cache, Table 1
    train: Resources  # one finding's model (a notebook 02 run)
    variant: Resources  # one whole-pipeline variant: 13 models and an SVM, in one job
    notebook: Resources  # steps 03-07 and the index

    def __post_init__(self) -> None:
        for kind in ("preprocess", "variant", "notebook"):
            r = getattr(self, kind)
            _check(r.nodes == 1 and r.procs == 1, kind, "nodes and procs > 1 are for launch.train (one model across processes)")
        bad = [a for a in self.srun_args if not str(a).startswith("-")]
        _check(not bad, "srun_args", f"each must be an option (start with '-'); {bad} would become the command")
        for a in self.srun_args:
            opt = str(a).split("=", 1)[0]
            _check(opt not in LAUNCH_OWNED_OPTIONS, "srun_args", f"{opt} is set from the resources of each job; use launch.<kind>.*")


#: srun options that scxnn.launch sets itself from ``launch.<kind>``.
LAUNCH_OWNED_OPTIONS = ("--gres", "--gpus", "-G", "--cpus-per-task", "-c", "--mem", "--time", "-t", "--output", "-o",
                        "--error", "-e", "--job-name", "-J", "--ntasks", "-n", "--partition", "-p", "--account", "-A")


@dataclass(frozen=True)
class Config:
    profile: str
    description: str
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    findings: dict[str, Literal["critical", "urgent", "non_urgent", "cardiomegaly"]]  # finding -> risk group
    unseen_findings: tuple[str, ...]  # evaluation-only findings (thesis Table 9)
    paths: Paths
    data: Data
    preprocess: Preprocess
    model: Model
    pretrain: Pretrain
    train: Train
    ensemble: Ensemble
    evaluate: Evaluate
    variants: Variants
    launch: Launch

    def __post_init__(self) -> None:
        _check(len(self.findings) >= 1, "findings", "must list at least one finding")
        _check(not set(self.findings) & set(self.unseen_findings), "unseen_findings", "must not overlap findings")
        stray = sorted(set(self.train.by_finding) - set(self.findings))
        _check(not stray, "train.by_finding", f"names findings not in this profile: {stray}")
        # A reduced variant protocol (say max_epochs: 1) would lose to a finding's own budget.
        proto = self.variants.protocol
        clash = sorted({k for over in self.train.by_finding.values() for k in over if f"train.{k}" in proto})
        _check(not clash or "train.by_finding" in proto, "train.by_finding",
               f"sets {clash}, which variants.protocol sets for every model; add train.by_finding (e.g. {{}}) "
               "to variants.protocol so that the variants share one protocol")

    # -- views -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The project root the relative paths are resolved against."""
        root = getattr(self, "_root", None)
        if root is not None:
            return root
        return Path(os.environ.get("SCXNN_ROOT") or _find_root(Path.cwd()) or _package_root())

    def path(self, name: Literal["data", "runs", "reports", "shared"]) -> Path:
        raw = getattr(self.paths, name).format(profile=self.profile)
        p = Path(raw).expanduser()
        return p if p.is_absolute() else self.root / p

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe dict (tuples become lists); what checkpoints embed."""
        return _plain(dataclasses.asdict(self))

    def fingerprint(self, *sections: str) -> str:
        """Short stable hash of the whole config, or of the named top-level sections only."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return sha256_text(blob, 12)

    def for_finding(self, finding: str) -> "Config":
        """The config ``finding``'s model trains with: ``train.by_finding[finding]`` applied over
        ``train`` (validated like any override). Idempotent; the same config when it has none."""
        over = self.train.by_finding.get(finding) or {}
        if not over:
            return self
        try:
            return self.replace({f"train.{k}": v for k, v in over.items()})
        except ConfigError as e:
            raise ConfigError(f"train.by_finding.{finding}: {e}") from None

    def replace(self, overrides: Mapping[str, Any] | Sequence[str]) -> "Config":
        """A new config with dotted-key overrides applied and validated."""
        merged = self.to_dict()
        _merge(merged, _overrides_to_tree(overrides), "override", "", _schema_tree(Config))
        new = _build(Config, merged, _Sources(default="override"), "")
        object.__setattr__(new, "_root", getattr(self, "_root", None))
        return new


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise _FieldError(key, msg)


class _FieldError(ValueError):
    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key = key
        self.msg = msg


# --------------------------------------------------------------------------- loading


def params_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The params/ folder: explicit, $SCXNN_PARAMS, the nearest ancestor of cwd that has one, or the
    checkout the package was installed from."""
    if explicit:
        return Path(explicit)
    if os.environ.get("SCXNN_PARAMS"):
        return Path(os.environ["SCXNN_PARAMS"])
    root = _find_root(Path.cwd()) or _package_root()
    return root / "params"


def available_profiles(pdir: str | os.PathLike | None = None) -> list[str]:
    d = params_dir(pdir)
    return sorted(p.stem for p in d.glob("*.yaml") if p.name != DEFAULTS_FILE)


def profile_chain(profile: str, pdir: str | os.PathLike | None = None) -> list[Path]:
    """Files that make up a profile, base first: defaults.yaml, then each ``extends`` ancestor."""
    d = params_dir(pdir)
    chain: list[Path] = []
    name: str | None = profile
    while name is not None:
        f = d / f"{name}.yaml"
        if not f.is_file():
            known = ", ".join(available_profiles(d)) or "none"
            hint = f"unknown profile {name!r}" if not chain else f"{chain[0].name}: 'extends: {name}' names no file"
            raise ConfigError(f"{hint} (looked for {f}; profiles in {d}: {known})")
        if f in chain:
            raise ConfigError(f"{f}: 'extends' cycle through {', '.join(p.name for p in chain)}")
        chain.insert(0, f)
        name = _read_yaml(f).get("extends")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{f}: extends: expected a profile name, got {name!r}")
    return [d / DEFAULTS_FILE, *chain]


def load_config(
    profile: str = "demo",
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    params: str | os.PathLike | None = None,
) -> Config:
    """Resolve ``profile`` (a name in params/, or a path to a YAML file) with optional overrides.

    ``overrides`` is a mapping of dotted keys (``{"train.max_epochs": 2}``), a nested mapping, or a
    list of ``"key=value"`` strings whose values are parsed as YAML scalars.
    """
    pdir = params_dir(params)
    if profile.endswith((".yaml", ".yml")) or os.sep in profile:
        # A path: its folder must also hold defaults.yaml (copy params/ to make your own set).
        f = Path(profile)
        pdir, profile = f.parent, f.stem
    defaults = pdir / DEFAULTS_FILE
    if not defaults.is_file():
        raise ConfigError(f"{defaults}: missing (params folder: {pdir})")
    schema = _schema_tree(Config)
    tree: dict[str, Any] = {}
    sources = _Sources()
    for f in profile_chain(profile, pdir):
        data = _read_yaml(f)
        data.pop("extends", None)
        if f.name != DEFAULTS_FILE and "profile" in data:
            raise ConfigError(f"{f}: profile: is set from the file name; remove the key")
        _merge(tree, data, str(f), "", schema, sources)
    tree["profile"] = profile
    sources.set("profile", "profile name")
    if overrides:
        _merge(tree, _overrides_to_tree(overrides), "override", "", schema, sources)
    cfg = _build(Config, tree, sources, "")
    for name in cfg.variants.runs:  # a typo in a variant fails here, not an hour into the study
        variant_config(cfg, name)
    # Relative paths in params resolve against the folder that holds params/, whatever the cwd
    # (papermill runs notebooks from notebooks/, the CLI from anywhere).
    object.__setattr__(cfg, "_root", pdir.resolve().parent)
    return cfg


def variant_config(cfg: Config, name: str) -> Config:
    """The config of whole-pipeline variant ``name``: the profile, then ``variants.protocol``, then the
    variant's own overrides. Its ``variants`` section is empty (a variant has no variants)."""
    v = cfg.variants
    if name not in v.runs:
        raise ConfigError(f"no variant {name!r} in profile {cfg.profile!r}; variants: {', '.join(v.runs) or 'none'}")
    over = {**v.protocol, **v.runs[name], "variants.protocol": {}, "variants.runs": {}, "variants.tables": {}}
    try:
        return cfg.replace(over)
    except ConfigError as e:
        raise ConfigError(f"variants.runs.{name} (with variants.protocol): {e}") from None


def save_resolved(cfg: Config, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.resolved.yaml`` (atomically) into ``directory``; returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    from scxnn import __version__

    header = {
        "scxnn_version": __version__,
        "config_fingerprint": cfg.fingerprint(),
        **(dict(extra) if extra else {}),
    }
    text = (
        "# Resolved SCXNN config: defaults -> profile -> overrides. Written by scxnn.config.save_resolved.\n"
        + yaml.safe_dump({"_meta": header}, sort_keys=False)
        + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    )
    path = d / RESOLVED_NAME
    atomic_write_text(path, text)
    return path


#: Sections that say where a job runs or what a profile is called, never what a step computes.
NON_RESULT_SECTIONS = ("description", "launch")


def write_settings_file(cfg: Config, path: str | os.PathLike) -> bool:
    """Write the settings the study's results depend on (``cfg`` but :data:`NON_RESULT_SECTIONS`) to
    ``path`` as sorted JSON, only when they differ from what it holds; returns whether it wrote.

    The Makefile's targets depend on this file instead of the params files, so a changed time limit
    in ``launch`` or a new comment reruns nothing. A file written for the first time gets the time
    stamp of the profile's newest params file: a deleted ``.make/`` is not a change of settings."""
    p = Path(path)
    d = {k: v for k, v in cfg.to_dict().items() if k not in NON_RESULT_SECTIONS}
    text = json.dumps(d, sort_keys=True, indent=1) + "\n"
    existed = p.is_file()
    if existed and p.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(p, text)
    if not existed:
        newest = max(f.stat().st_mtime for f in profile_chain(cfg.profile))
        os.utime(p, (newest, newest))
    return True


def load_resolved(path: str | os.PathLike) -> Config:
    """Rebuild a Config from a ``config.resolved.yaml`` or a checkpoint's embedded dict file."""
    p = Path(path)
    data = _read_yaml(p)
    data.pop("_meta", None)
    return config_from_dict(data, source=str(p))


def config_from_dict(data: Mapping[str, Any], source: str = "dict") -> Config:
    """Rebuild a Config from its plain dict (a checkpoint's embedded config, a resolved file).

    A key that an older file lacks takes today's default: settings are only ever added with a
    default that reproduces the earlier behaviour (e.g. ``train.max_val_images: 0``, all films), so
    older checkpoints stay loadable. The filled keys are logged."""
    tree: dict[str, Any] = {}
    sources = _Sources()
    schema = _schema_tree(Config)
    try:
        defaults = _read_yaml(params_dir() / DEFAULTS_FILE)
    except ConfigError:
        defaults = {}
    defaults = {k: v for k, v in defaults.items() if k in schema}
    _merge(tree, defaults, "defaults", "", schema, sources)
    _merge(tree, dict(data), source, "", schema, sources)
    filled = [k for k in _leaf_keys(defaults) if not _has_key(data, k)]
    if filled:
        import logging

        logging.getLogger("scxnn").debug("%s: keys missing, today's defaults used: %s", source, ", ".join(filled))
    return _build(Config, tree, sources, "")


def _leaf_keys(tree: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping) and k not in ("findings",) and not prefix.startswith("variants"):
            out += _leaf_keys(v, f"{prefix}{k}.") if v else [f"{prefix}{k}"]
        else:
            out.append(f"{prefix}{k}")
    return out


def _has_key(tree: Mapping, dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


# --------------------------------------------------------------------------- internals


class _Sources:
    """Which file last set each dotted key, for error messages."""

    def __init__(self, default: str = "params") -> None:
        self._by_key: dict[str, str] = {}
        self._default = default

    def set(self, key: str, src: str) -> None:
        self._by_key[key] = src

    def get(self, key: str) -> str:
        while key:
            if key in self._by_key:
                return self._by_key[key]
            key = key.rpartition(".")[0]
        return self._default


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _schema_tree(cls: type) -> dict[str, Any]:
    """Nested dict of field name -> sub-schema (dataclass) or None (leaf)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (_schema_tree(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None) for f in fields(cls)}


def _merge(dst: dict, src: Mapping, source: str, prefix: str, schema: dict | None, sources: _Sources | None = None) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if schema is not None:
            if not isinstance(key, str) or key not in schema:
                close = difflib.get_close_matches(str(key), list(schema), n=1)
                hint = f" (did you mean {prefix}{close[0]!r}?)" if close else ""
                allowed = ", ".join(schema)
                raise ConfigError(f"{source}: unknown key {dotted!r}{hint}; allowed here: {allowed}")
            sub = schema[key]
        else:
            sub = None
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted}: expected a mapping of keys, got {value!r}")
            _merge(dst.setdefault(key, {}), value, source, dotted + ".", sub, sources)
        else:
            # Leaves (including dict-valued ones such as `findings`) are replaced whole, not merged:
            # a profile that lists findings means exactly those findings.
            dst[key] = value
            if sources is not None:
                sources.set(dotted, source)


def _overrides_to_tree(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    if isinstance(overrides, str):
        overrides = [overrides]
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"override: expected 'key=value', got {item!r}")
            k, v = item.split("=", 1)
            try:
                parsed = yaml.safe_load(v) if v.strip() else None
            except yaml.YAMLError:
                parsed = v
            items.append((k.strip(), parsed))
    tree: dict[str, Any] = {}
    for key, value in items:
        node = tree
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override: {key!r} conflicts with another override")
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return tree


def _build(cls: type, data: Mapping[str, Any], sources: _Sources, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        dotted = f"{prefix}{f.name}"
        if f.name not in data:
            raise ConfigError(f"{sources.get(prefix.rstrip('.')) if prefix else 'params'}: missing key {dotted!r} (add it to params/{DEFAULTS_FILE})")
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], dotted, sources)
    try:
        return cls(**kwargs)
    except _FieldError as e:
        key = f"{prefix}{e.key}"
        head, _, rest = e.key.partition(".")  # a cross-section check names its field as section.field
        got = getattr(kwargs.get(head), rest, None) if rest else kwargs.get(e.key)
        raise ConfigError(f"{sources.get(key)}: {key}: {e.msg}, got {_short(got)}") from None


def _coerce(tp: Any, value: Any, key: str, sources: _Sources) -> Any:
    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{sources.get(key)}: {key}: expected {expected}, got {_short(value)}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            fail("a mapping")
        return _build(tp, value, sources, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0] if len(inner) == 1 else typing.Union[tuple(inner)], value, key, sources)
    if origin is Literal:
        # bool is an int subclass: `True` must not pass for choice 1.
        if any(value == a and type(value) is type(a) for a in args):
            return value
        fail("one of " + ", ".join(repr(a) for a in args))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        fail("a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]", sources) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f"a list of {len(args)} items")
        return tuple(_coerce(a, v, f"{key}[{i}]", sources) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            fail("a mapping")
        kt, vt = args
        return {_coerce(kt, k, f"{key}.{k}", sources): _coerce(vt, v, f"{key}.{k}", sources) for k, v in value.items()}
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in the schema, not in params


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _find_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / "params" / DEFAULTS_FILE).is_file() and (d / "scxnn").is_dir():
            return d
    return None


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]
