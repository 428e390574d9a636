"""The study trunk: a stand-in for the thesis' ImageNet start, learned from the study's own films.

The thesis starts every per-finding DenseNet-121 from ImageNet weights (its step 1). This project
downloads nothing, and in a fresh clone there are no ImageNet weights on disk. ``model.pretrained:
study`` gives every per-finding model (and every variant with the same backbone and preprocessing)
another start: one encoder per backbone, pretrained once on the profile's internal training films.

* **Task**: a multi-label classifier over the study's findings, one logit each (binary
  cross-entropy over the labels that are known: hard and weak labels alike; NA is left out). With
  ``pretrain.masks`` (the shipped trunk's ``params/trunk.yaml``) a U-Net decoder also reconstructs
  the film's dilated lesions (+ ``model.recon_weight`` x MSE, hard-labelled films only), so the
  per-finding models get a decoder start too; without it, labels only and no decoder. The trunk
  learns what chest films and their findings look like, and the per-finding models then learn
  their own task (3-way head, lesion reconstruction) on top of it.
* **Films**: the ``train`` split only (the same films the per-finding models train on); the
  ``val`` split's hard-labelled films give the mean per-finding AUC logged each epoch. Test and
  evaluation sites are never read.
* **Draws**: ``pretrain.epochs`` x ``pretrain.images_per_epoch`` draws with replacement, each film
  weighted by 1 / (the count of its rarest positive finding, or of normal films), so every finding
  is seen about equally often. Adam with a cosine learning-rate decay over the whole budget; the
  training augmentations of ``train.augment_*``.
* **Output**: ``runs/<profile>/trunk/<backbone>-<preprocessing fingerprint>/trunk.pt``: under
  ``model`` an SCXNN state dict holding the encoder, and the decoder with masks (what
  :meth:`scxnn.models.SCXNN.load_pretrained` reads), and beside it the multi-label head (``head``),
  the resolved config and the history (also ``history.csv``). ``last.pt`` is written atomically
  every epoch, so a killed run resumes; draws and augmentations are pure functions of (seed, epoch,
  index). The steps, the resumption and the checkpoints are :mod:`scxnn.loop`'s, as for the
  per-finding models. :func:`build_trunk` (``make trunk``) also scores the finished head per finding
  (:func:`head_auc`; ``head_auc.csv``, and a table in the shipped card).
  A trunk is reused as long as the settings it was made with are unchanged; otherwise it is rebuilt.
  Parallel jobs that need the same trunk wait for the one that builds it (a file lock).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from scxnn.checkpoints import HISTORY_NAME, LAST_NAME
from scxnn.config import Config
from scxnn.dataset import ANY_FINDING, RadiographDataset, load_study_manifest, make_loader, sample_seed
from scxnn.hardware import bf16_supported, machine_description, resolve_device
from scxnn.loop import evaluate, optimise, prepare_run_dir, resumable, save_epoch
from scxnn.losses import recon_mse
from scxnn.metrics import auc_with_ci, fmt_ci
from scxnn.models import Encoder, UNetDecoder
from scxnn.pixels import fingerprint
from scxnn.utils import atomic_open, atomic_write_text, file_lock, seed_everything, sha256_file
from scxnn.weights import CARD_NAME, trunk_sha256_path

log = logging.getLogger("scxnn")

TRUNK_NAME = "trunk.pt"
HEAD_AUC_NAME = "head_auc.csv"  # the finished trunk's head, per finding, on its validation films
# The settings a trunk depends on; any change rebuilds it (the per-finding settings do not matter).
TRUNK_SECTIONS = ("seed", "findings", "data", "preprocess", "pretrain")
TRUNK_MODEL_KEYS = ("backbone", "decoder", "decoder_widths", "recon_weight", "dilate_mask")
TRUNK_TRAIN_KEYS = ("batch_size", "betas", "weight_decay", "augment", "augment_p", "augment_shift", "augment_rotate",
                    "augment_gamma", "augment_sharpen", "augment_blur", "augment_noise", "bf16")


def trunk_settings(cfg: Config) -> dict:
    """The part of the config a trunk is made from (stored in it, compared on reuse)."""
    d = cfg.to_dict()
    out = {k: d[k] for k in TRUNK_SECTIONS}
    out["backbone"] = cfg.model.backbone
    if cfg.pretrain.masks:  # the decoder's shape and loss matter only then
        out["model"] = {k: d["model"][k] for k in TRUNK_MODEL_KEYS}
    out["train"] = {k: d["train"][k] for k in TRUNK_TRAIN_KEYS}
    return out


def trunk_dir(cfg: Config) -> Path:
    return cfg.path("runs") / "trunk" / f"{cfg.model.backbone}-{fingerprint(cfg.preprocess)}"


def trunk_path(cfg: Config) -> Path:
    return trunk_dir(cfg) / TRUNK_NAME


def resolve_pretrained(cfg: Config, progress: bool = True) -> str:
    """``model.pretrained`` as :class:`scxnn.models.SCXNN` takes it: ``study`` becomes the path of the
    profile's trunk for this backbone and preprocessing, pretrained first when it is missing or stale."""
    if cfg.model.pretrained != "study":
        return cfg.model.pretrained
    return str(ensure_trunk(cfg, progress=progress))


def multilabel_targets(df: pd.DataFrame, findings) -> np.ndarray:
    """(n, len(findings)) float32: 1 present, 0 absent, NaN unknown (a weak label's missing entries)."""
    cols = []
    for f in findings:
        if f not in df:
            raise KeyError(f"finding {f!r} is not a manifest column")
        cols.append(pd.to_numeric(df[f], errors="coerce").to_numpy(dtype=np.float32))
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0), np.float32)


def balanced_draws(y: np.ndarray, seed: int, epoch: int, k: int) -> list[int]:
    """``k`` row indices drawn with replacement, each row weighted by 1 / (the count of its rarest
    positive finding, or of the rows without any): every finding about equally often. A pure
    function of (seed, epoch)."""
    n = len(y)
    if n == 0 or k <= 0:
        return []
    pos = np.nan_to_num(y, nan=0.0) == 1
    counts = pos.sum(axis=0)
    normal = ~pos.any(axis=1)
    w = np.full(n, 1.0 / max(int(normal.sum()), 1))
    for i in np.flatnonzero(~normal):
        w[i] = 1.0 / counts[pos[i]].min()
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 0x7B))
    return torch.multinomial(torch.as_tensor(w, dtype=torch.double), k, replacement=True, generator=g).tolist()


class TrunkNet(nn.Module):
    """The backbone's encoder with one logit per finding on its pooled deepest features, and with
    ``decoder_widths`` an SCXNN U-Net decoder that reconstructs the film's lesions."""

    def __init__(self, backbone: str, n_out: int, decoder_widths: tuple[int, ...] | None = None):
        super().__init__()
        self.encoder = Encoder(backbone)
        self.fc = nn.Linear(self.encoder.channels[-1], n_out)
        self.decoder = UNetDecoder(self.encoder.channels, tuple(decoder_widths)) if decoder_widths else None

    def forward(self, x: torch.Tensor, decode: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(feats[-1], 1), 1))
        if decode:
            return logits, self.decoder(feats)
        return logits

    def scxnn_state(self) -> dict[str, torch.Tensor]:
        """Encoder (and decoder) weights under SCXNN's names: what SCXNN.load_pretrained reads."""
        sd = {f"encoder.{k}": v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        if self.decoder is not None:
            sd.update({f"decoder.{k}": v.detach().cpu() for k, v in self.decoder.state_dict().items()})
        return sd


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels only (NaN: unknown)."""
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float()[known], y[known])


def mean_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean over findings of the AUC on the rows whose label is known, for findings with both classes."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        yy = y[known, j]
        if 0 < yy.sum() < len(yy):
            aucs.append(roc_auc_score(yy, p[known, j]))
    return float(np.mean(aucs)) if aucs else float("nan")


def _stored_settings(path: Path) -> dict | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or partial: treat as absent, it is rebuilt
        return None
    return obj.get("settings") if isinstance(obj, dict) else None


def ensure_trunk(cfg: Config, progress: bool = True) -> Path:
    """The trunk for ``cfg`` (its backbone and preprocessing), pretrained when missing or made with
    other settings. Safe to call from parallel jobs: one builds, the others wait."""
    out = trunk_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".lock"):
        path = out / TRUNK_NAME
        if path.is_file() and _stored_settings(path) == _plain(trunk_settings(cfg)):
            return path
        return pretrain_trunk(cfg, out, progress=progress)


def _plain(d):
    return json.loads(json.dumps(d))


def pretrain_trunk(cfg: Config, out_dir: str | Path | None = None, manifest=None, progress: bool = True) -> Path:
    """Pretrain (or resume) the trunk; returns the path of ``trunk.pt``. See the module docstring."""
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else trunk_dir(cfg)
    settings = _plain(trunk_settings(cfg))
    device = resolve_device(cfg)
    seed = sample_seed(cfg.seed, 0x7E)
    seed_everything(seed)
    data = _trunk_data(cfg, manifest, seed)
    model, opt, sched = _trunk_optimisation(cfg, data.decode, device)
    history, start = _resume_trunk(out, settings, model, opt, sched, cfg.model.backbone, device)
    prepare_run_dir(out, cfg, fresh=start == 0, extra={"step": "trunk", "backbone": cfg.model.backbone})

    pc = cfg.pretrain
    for epoch in range(start, pc.epochs):
        te = time.perf_counter()
        train_bce = _trunk_epoch(model, opt, sched, data, cfg, seed, epoch, device, progress)
        p_va = _trunk_val_probs(model, data, cfg, seed, device)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_bce": train_bce,
               "val_mean_auc": mean_auc(data.y_va, p_va), "seconds": round(time.perf_counter() - te, 1)}
        history.append(row)
        log.info("trunk %s epoch %d/%d: train BCE %.4f, val mean AUC %.3f (%.0f s)", cfg.model.backbone, epoch + 1, pc.epochs,
                 row["train_bce"], row["val_mean_auc"], row["seconds"])
        save_epoch(out, {"settings": settings, "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "history": history}, history)

    path = _save_trunk(out / TRUNK_NAME, model, settings, cfg, history)
    (out / LAST_NAME).unlink(missing_ok=True)
    log.info("trunk %s: %s (%.0f s)", cfg.model.backbone, path, time.perf_counter() - t0)
    return path


@dataclasses.dataclass
class _TrunkData:
    """The films a trunk learns from: the training set (its draws weighted by ``y_tr``) and the
    hard-labelled validation set, with their multi-label targets."""

    findings: list[str]
    y_tr: np.ndarray
    y_va: np.ndarray
    va_patients: np.ndarray  # one id per validation film (the bootstrap's unit)
    y_tr_t: torch.Tensor
    ds: RadiographDataset
    val_ds: RadiographDataset
    decode: bool  # pretrain.masks with a decoder: the trunk also reconstructs the lesions


def _trunk_data(cfg: Config, manifest, seed: int) -> _TrunkData:
    findings = list(cfg.findings)
    df, base = load_study_manifest(cfg, manifest)
    tr = df[df["split"] == "train"].reset_index(drop=True)
    va = df[(df["split"] == "val") & (df["label_type"] == "hard")].reset_index(drop=True)
    if tr.empty:
        raise ValueError("no training films in the manifest: nothing to pretrain the study trunk on")
    y_tr, y_va = multilabel_targets(tr, findings), multilabel_targets(va, findings)
    # RadiographDataset reads, augments and scales the films; with pretrain.masks its target is the
    # image times the union of the film's dilated lesion masks (reconstruction), else no masks.
    decode = cfg.pretrain.masks and cfg.model.decoder != "none"
    rec_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, decoder="reconstruction"))
    tr_, va_ = (tr, va) if decode else (tr.assign(masks=""), va.assign(masks=""))
    ds = RadiographDataset(tr_, base, ANY_FINDING, np.arange(len(tr)), rec_cfg, augment=True, seed=seed)
    val_ds = RadiographDataset(va_, base, ANY_FINDING, np.arange(len(va)), rec_cfg, augment=False)
    return _TrunkData(findings, y_tr, y_va, va["patient_id"].astype(str).to_numpy(), torch.from_numpy(y_tr), ds, val_ds, decode)


def _trunk_optimisation(cfg: Config, decode: bool, device: torch.device):
    """(the freshly initialised TrunkNet, Adam, its cosine decay over the whole draw budget)."""
    pc = cfg.pretrain
    model = TrunkNet(cfg.model.backbone, len(cfg.findings), cfg.model.decoder_widths if decode else None).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(pc.images_per_epoch / cfg.train.batch_size)
    total = max(1, pc.epochs * steps_per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=pc.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return model, opt, sched


def _resume_trunk(out: Path, settings: dict, model: TrunkNet, opt, sched, backbone: str, device: torch.device) -> tuple[list[dict], int]:
    """(history, epochs done) of ``out/last.pt`` when it was made with ``settings``, its states loaded
    into ``model``, ``opt`` and ``sched``; else ([], 0)."""
    ck, why = resumable(out, device, lambda ck: None if ck.get("settings") == settings else "made with other settings")
    if why:
        log.warning("%s: %s; the trunk is pretrained again", out / LAST_NAME, why)
    if ck is None:
        return [], 0
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    start = int(ck["epoch"])
    log.info("trunk %s: resuming after epoch %d", backbone, start)
    return [dict(r) for r in ck["history"]], start


def _trunk_epoch(model: TrunkNet, opt, sched, data: _TrunkData, cfg: Config, seed: int, epoch: int, device: torch.device,
                 progress: bool) -> float:
    """One epoch of balanced draws (the learning rate steps every batch); returns its mean loss."""
    data.ds.set_epoch(epoch)
    idx = balanced_draws(data.y_tr, seed, epoch, cfg.pretrain.images_per_epoch)
    model.train()

    def loss(out, b):
        yb = data.y_tr_t[b["index"].cpu()].to(device)
        logits, recon = out if data.decode else (out, None)
        value = masked_bce(logits, yb)
        if data.decode:  # hard-labelled films only: weak labels have no masks
            value = value + cfg.model.recon_weight * recon_mse(recon, b)
        return value, (float(value.detach()) * len(yb), len(yb))

    recs = optimise(make_loader(data.ds, idx, cfg, seed, epoch + 1, device), lambda b: model(b["image"], decode=data.decode), loss,
                    opt, cfg, device, sched=sched, desc=f"trunk {cfg.model.backbone} epoch {epoch + 1}/{cfg.pretrain.epochs}", progress=progress)
    tot, n = 0.0, 0
    for t, k in recs:  # one addition at a time, in batch order
        tot, n = tot + t, n + k
    return tot / max(n, 1)


def _trunk_val_probs(model: TrunkNet, data: _TrunkData, cfg: Config, seed: int, device: torch.device) -> np.ndarray:
    """(validation films, findings) sigmoid probabilities, for the epoch's mean AUC."""
    model.eval()
    loader = make_loader(data.val_ds, range(len(data.val_ds)), cfg, seed, 0, device, batch_size=max(cfg.train.batch_size, 16))
    probs = [torch.sigmoid(out.float()).cpu().numpy() for _, out in evaluate(loader, lambda b: model(b["image"]), cfg, device)]
    return np.concatenate(probs) if probs else np.zeros((0, len(data.findings)), np.float32)


def _save_trunk(path: Path, model: TrunkNet, settings: dict, cfg: Config, history: list[dict]) -> Path:
    with atomic_open(path, "wb") as fh:
        # The multi-label head rides along (not under "model": the per-finding models never load it),
        # so the trunk's own per-finding AUCs can be read back.
        head = {k: v.detach().cpu() for k, v in model.fc.state_dict().items()}
        torch.save({"model": model.scxnn_state(), "head": head, "settings": settings, "config": cfg.to_dict(), "history": history}, fh)
    return path


def head_auc(cfg: Config, trunk_pt: Path, manifest=None) -> pd.DataFrame:
    """The finished trunk's own multi-label head (``trunk.pt``'s ``head``) on its validation films,
    per finding: columns finding, n_pos, n_neg, auc, auc_lo, auc_hi (:func:`scxnn.metrics.auc_with_ci`,
    patients resampled). The epoch log keeps only the mean, and one pretraining is a draw: two of
    the same recipe read support device 0.715 and 0.959 (docs/method-and-training.md), so this is
    what to read before a trunk ships. Its mean is the log's last ``val_mean_auc``. It scores the
    validation films again (the last epoch did too) so that a reused trunk gets the same table."""
    obj = torch.load(trunk_pt, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "head" not in obj:
        raise ValueError(f"{trunk_pt}: no multi-label head (a shipped file, or a trunk.pt from before the head was kept); "
                         "give the pretraining's own trunk.pt")
    device = resolve_device(cfg)
    seed = sample_seed(cfg.seed, 0x7E)
    data = _trunk_data(cfg, manifest, seed)
    model = TrunkNet(cfg.model.backbone, len(data.findings), cfg.model.decoder_widths if data.decode else None)
    model.load_state_dict({**obj["model"], **{f"fc.{k}": v for k, v in obj["head"].items()}})
    model = model.to(device)
    if cfg.train.channels_last:  # the layout it was trained and logged in: bf16 scores depend on it
        model = model.to(memory_format=torch.channels_last)
    p = _trunk_val_probs(model, data, cfg, seed, device)
    rows = []
    for j, finding in enumerate(data.findings):
        known = ~np.isnan(data.y_va[:, j])
        rows.append({"finding": finding, **auc_with_ci(data.y_va[known, j].astype(int), p[known, j], data.va_patients[known],
                                                        cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci)})
    return pd.DataFrame(rows)


def _head_auc_markdown(head: pd.DataFrame, ci: float) -> str:
    rows = [f"| {r.finding} | {fmt_ci(r.auc, r.auc_lo, r.auc_hi)} | {r.n_pos} | {r.n_neg} |" for r in head.itertuples()]
    return "\n".join([f"| finding | AUC [{ci:.0%} CI] | positives | negatives |", "|---|---|---|---|", *rows,
                      f"| **mean** | {fmt_ci(head['auc'].mean())} | | |"])


def _warn_weak_findings(head: pd.DataFrame) -> list[str]:
    """The findings whose head AUC interval reaches down to 0.5 (the head does not separate them), each logged
    as a warning; a finding without positives among the validation films has no AUC and is not listed."""
    weak = head[head["auc"].notna() & ~(head["auc_lo"] > 0.5)]
    for r in weak.itertuples():
        log.warning("trunk head: %s is not separated on the validation films (AUC %s, %d positives)", r.finding,
                    fmt_ci(r.auc, r.auc_lo, r.auc_hi), r.n_pos)
    return list(weak["finding"])


# --------------------------------------------------------------------------- the shipped trunk


def ship_trunk(cfg: Config, trunk_pt: Path, dest: Path, command: str, seconds: dict[str, float], films: dict[str, int],
               head: pd.DataFrame | None = None) -> str:
    """Write the trunk at ``trunk_pt`` (from :func:`pretrain_trunk`) as the shipped file ``dest``:
    the SCXNN weights in fp16 (integer buffers as they are) under ``model``, its SHA-256 beside it,
    and the card ``TRUNK_CARD.md`` (checksum, command, machine, wall time, the head's AUC per finding
    (``head``, from :func:`head_auc`), resolved config, log).
    Returns the SHA-256."""
    obj = torch.load(trunk_pt, map_location="cpu", weights_only=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in obj["model"].items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(dest, "wb") as fh:
        torch.save({"model": sd}, fh)
    sha = sha256_file(dest)
    atomic_write_text(trunk_sha256_path(dest), f"{sha}  {dest.name}\n")
    hist = pd.DataFrame(obj["history"])
    total = sum(seconds.values())
    card = f"""# The shipped trunk: `{dest.name}`

The start of every finding model of the `demo` and `smoke` profiles (`model.pretrained: trunk`),
in the part ImageNet plays in the thesis. Made by `{command}` (`scxnn.pretrain`; profile
`params/trunk.yaml`); `make reports` never rebuilds it, and every model checks the SHA-256 below
before it loads the file (`scxnn.models.shipped_trunk`).

| | |
|---|---|
| SHA-256 | `{sha}` |
| size | {dest.stat().st_size / 2**20:.1f} MiB, fp16 ({sum(v.numel() for v in sd.values()):,} values) |
| contents | {cfg.model.backbone} encoder{' and U-Net decoder (widths ' + ', '.join(map(str, cfg.model.decoder_widths)) + ')' if any(k.startswith('decoder.') for k in sd) else ''}, under `model`, SCXNN names; loads with `torch.load(weights_only=True)` |
| objective | {'multi-label BCE over the 13 findings + ' + str(cfg.model.recon_weight) + ' x MSE of the lesion reconstruction (image x union of the dilated masks)' if cfg.pretrain.masks else 'multi-label BCE over the 13 findings'}; {cfg.pretrain.epochs} epochs x {cfg.pretrain.images_per_epoch} class-balanced draws, Adam, cosine from lr {cfg.pretrain.lr} |
| films | {films.get('train', 0):,} training films ({films.get('hard', 0):,} hard-labelled with masks), {films.get('val', 0):,} validation films for the log; seed {cfg.seed}, internal site only, no unseen finding, disjoint from every study film (tests/test_trunk.py) |
| wall time | {total / 60:.1f} min: {', '.join(f'{k} {v / 60:.1f} min' for k, v in seconds.items())} |
| machine | {machine_description(str(resolve_device(cfg)))}; native CPU bf16: {'yes' if bf16_supported('cpu') else 'no'} (train.bf16: {cfg.train.bf16}); torch {torch.__version__} |

The objective was chosen by measurement against a labels-only trunk and against training from
scratch (docs/method-and-training.md, "The shipped trunk"), which also says whether other work shared the machine
while it ran.

## Its head on the validation films

The multi-label head the trunk was trained with (not shipped), on the {films.get('val', 0):,} validation films
of its draw; one pretraining is a draw, so read this before a rebuilt trunk replaces a shipped one.

{_head_auc_markdown(head, cfg.evaluate.ci) if head is not None else "Not measured."}

## Training log

{_markdown_table(hist)}

## Resolved config

```yaml
{yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()}
```
"""
    atomic_write_text(dest.with_name(CARD_NAME), card)
    return sha


def _markdown_table(df: pd.DataFrame) -> str:
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)] + ["| " + " | ".join(r) + " |" for r in cells])


def build_trunk(cfg: Config, out_dir: Path | None = None, ship_to: Path | None = None, command: str = "make trunk",
                progress: bool = True) -> tuple[Path, str | None]:
    """The whole trunk job: the profile's synthetic draw, preprocessed; the pretraining (resumable);
    its head's per-finding AUC (``head_auc.csv`` beside ``trunk.pt``, logged, a warning for any finding
    it does not separate); with ``ship_to``, the shipped file and its card. Returns (trunk.pt, SHA-256
    of the shipped file or None)."""
    from scxnn.sources import build_study_cache

    t0 = time.perf_counter()
    df, _ = build_study_cache(cfg, progress=progress)
    t1 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else trunk_dir(cfg)
    path = out / TRUNK_NAME
    if path.is_file() and _stored_settings(path) == _plain(trunk_settings(cfg)):
        log.info("trunk: %s is finished with these settings; not pretrained again", path)
        pre = float(pd.read_csv(out / HISTORY_NAME)["seconds"].sum())  # the pretraining's own time, from its log
    else:
        path = pretrain_trunk(cfg, out, progress=progress)
        pre = time.perf_counter() - t1
    head = head_auc(cfg, path)
    with atomic_open(out / HEAD_AUC_NAME, "w") as fh:
        head.to_csv(fh, index=False)
    log.info("trunk head on its validation films: mean AUC %.3f; %s", head["auc"].mean(),
             ", ".join(f"{r.finding} {r.auc:.3f}" for r in head.itertuples()))
    _warn_weak_findings(head)
    if ship_to is None:
        return path, None
    films = {"train": int((df["split"] == "train").sum()), "val": int(((df["split"] == "val") & (df["label_type"] == "hard")).sum()),
             "hard": int(((df["split"] == "train") & (df["label_type"] == "hard")).sum())}
    data_key = "data and preprocessing" + (" (cache already built: its build is not counted)" if t1 - t0 < 60 else "")
    sha = ship_trunk(cfg, path, Path(ship_to), command, {data_key: t1 - t0, "pretraining": pre}, films, head)
    return path, sha
