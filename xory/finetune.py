"""Fine-tune EfficientNet-Lite0 on whole photos, the fastai way: the original "BTS or EXO" method, and the tool for
generic datasets (bears, pets) when a linear head on frozen features is not enough. Needs the [finetune] extra;
only `xory train --finetune` imports it.

The recipe is fastai's `fine_tune`: `frozen_epochs` with the body frozen (only the new classifier learns, one-cycle
with pct_start 0.99), then the whole network with discriminative learning rates (lr/100, lr/10, lr from the stem to
the classifier, base lr halved) and a one-cycle schedule (div 5, pct_start 0.3), AdamW (wd 0.01), cross-entropy.
Augmentation (kornia): random resized crop (scale 0.5-1), flip, rotation up to 10 degrees, colour jitter. One
difference, for 2 CPU cores: in the frozen epochs the batch-norm layers stay frozen too, so the body runs without
gradients. Early stopping watches the validation loss and keeps the best epoch's weights.

The result is an ordinary image-mode bundle: the fine-tuned network is `backbone.onnx` inside it (same outputs as
the stock backbone: features, feature_map, logits), and its classifier layer is the image head, stored as a
LinearHead (W, b, mean 0, scale 1) on the pooled features. So predict, serve and the class activation map run
unchanged through onnxruntime, without torch."""
from __future__ import annotations

import copy
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

try:
    import kornia.augmentation as K
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - the core install
    raise ImportError(f"fine-tuning needs the [finetune] extra: pip install -e '.[finetune]' ({e})") from e

from PIL import Image

from .bundle import ARRAYS_FILE, ModelBundle, file_sha256
from .dataset import NEITHER, Sample, scan
from .evaluate import evaluate_split, format_metrics
from .features.cache import PhotoFeatures
from .features.image import SIZE, ImageEmbedder
from .heads import LinearHead
from .images import ImageError, open_image
from .model import Model
from .split import holdout_split, load_split, save_split
from .torchnet import Backbone, export_onnx, load_net
from .train import SPLIT_FILE, TrainConfig, _leaf_depths, check_config, load_table

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "BACKBONE_FILE"]

BACKBONE_FILE = "backbone.onnx"
STORE = 256  # training photos are kept squashed to 256x256 uint8; the random crop then resizes to 224
ONNX_TOLERANCE = 1e-3  # max |onnxruntime - torch| over the outputs, checked after export


@dataclass
class FinetuneConfig(TrainConfig):
    """TrainConfig (data, out, negatives, holdout or split, seed, ...) plus the fine-tuning knobs."""

    epochs: int = 4  # unfrozen epochs, after the frozen ones
    frozen_epochs: int = 1
    lr: float = 2e-3  # fastai fine_tune's base_lr
    batch_size: int = 32
    valid: float = 0.2  # share of the training photos that early stopping watches (never the held-out ones)
    patience: int = 2  # unfrozen epochs without a better validation loss before stopping
    max_minutes: float | None = None  # no epoch is started that would end past this (estimated from the last one)
    threads: int = 2


@dataclass
class FinetuneResult:
    folder: Path
    manifest: dict
    net: nn.Module = field(repr=False)  # the fine-tuned torch network (eval mode): for checks and notebooks


@dataclass
class _Data:
    x: torch.Tensor  # (n, 3, s, s) uint8
    y: torch.Tensor  # (n,) int64


def _pixels(samples: list[Sample], classes: list[str], side: int, log: Callable[[str], None]) -> _Data:
    """Open each photo with xory's opener, squash it to side x side (bilinear, as xory.features.image does)."""
    index = {c: i for i, c in enumerate(classes)}
    xs, ys = [], []
    for s in samples:
        try:
            img = open_image(s.path).image
        except ImageError as e:
            log(f"skipped {s.path}: {e.reason}")
            continue
        arr = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)
        xs.append(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
        ys.append(index[s.leaf])
    if not xs:
        raise ValueError("no readable photos to fine-tune on")
    return _Data(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> (x*255 - 127.5)/127.5, the backbone's input scaling, channels-last."""
    return (x * 2.0 - 1.0).contiguous(memory_format=torch.channels_last)


def _augment() -> nn.Module:
    return nn.Sequential(
        K.RandomResizedCrop((SIZE, SIZE), scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(),
        K.RandomRotation(degrees=10.0, p=0.75),
        K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, p=0.75),
    )


def _param_groups(net: nn.Module, lr: float) -> list[dict]:
    """Three groups, as fastai splits a pretrained body and a new head: stem + first half of the blocks, the rest
    of the body, the classifier; learning rates lr/100, lr/10, lr (geometric, like slice(lr/100, lr))."""
    half = len(net._blocks) // 2
    early = [*net._conv_stem.parameters(), *net._bn0.parameters(),
             *(p for b in net._blocks[:half] for p in b.parameters())]
    late = [*(p for b in net._blocks[half:] for p in b.parameters()),
            *net._conv_head.parameters(), *net._bn1.parameters()]
    return [{"params": early, "lr": lr / 100}, {"params": late, "lr": lr / 10},
            {"params": list(net._fc.parameters()), "lr": lr}]


def _set_frozen(net: nn.Module, frozen: bool) -> None:
    for name, p in net.named_parameters():
        p.requires_grad = not frozen or name.startswith("_fc.")


def _batches(n: int, bs: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of bs photos; the last partial one is dropped, as fastai does for training."""
    order = torch.randperm(n, generator=gen)
    return [order[i:i + bs] for i in range(0, n - n % bs, bs)]


def _forward(net: nn.Module, x: torch.Tensor, frozen: bool) -> torch.Tensor:
    """Logits; with a frozen body, no gradients flow into it."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        feats = net.extract_features(x).mean(dim=(2, 3))
    return net._fc(net._dropout(feats))


def _evaluate(net: nn.Module, data: _Data, bs: int) -> tuple[float, float]:
    """(mean cross-entropy, error rate) on un-augmented photos."""
    net.eval()
    losses, wrong = [], 0
    with torch.no_grad():
        for i in range(0, len(data.y), bs):
            x = _normalise(data.x[i:i + bs].float() / 255.0)
            logits = _forward(net, x, frozen=True)
            losses.append(nn.functional.cross_entropy(logits, data.y[i:i + bs], reduction="sum").item())
            wrong += int((logits.argmax(1) != data.y[i:i + bs]).sum())
    return sum(losses) / len(data.y), wrong / len(data.y)


def _run_phase(net, train: _Data, aug, opt, sched, bs: int, frozen: bool, gen: torch.Generator,
               bar_title: str | None) -> list[float]:
    """One epoch; the per-step training losses. `bar_title`: show a progress bar over the batches."""
    from tqdm import tqdm

    net.train()
    if frozen:
        net.eval()  # batch-norm statistics and drop-connect stay as pretrained; dropout before the classifier on
        net._dropout.train()
    losses = []
    for idx in tqdm(_batches(len(train.y), bs, gen), desc=bar_title, unit="batch", leave=False,
                    disable=bar_title is None, file=sys.stderr, dynamic_ncols=True):
        with torch.no_grad():
            x = _normalise(aug(train.x[idx].float() / 255.0))
        loss = nn.functional.cross_entropy(_forward(net, x, frozen), train.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
    return losses


def _split(cfg: FinetuneConfig, samples, feats, log) -> tuple[list[int], list[int]]:
    """(train, held-out) indices exactly as xory.train makes them: a split file, or a leak-free hold-out."""
    if cfg.split:
        test = load_split(cfg.split)["test"]
        held = [i for i, f in enumerate(feats) if f.sha256 in test]
        log(f"split {cfg.split}: {len(held)} photos held out")
        return [i for i, f in enumerate(feats) if f.sha256 not in test], held
    if cfg.holdout > 0:
        tr, held = holdout_split(samples, feats, cfg.holdout, cfg.seed)
        log(f"hold-out: {len(held)} photos (whole duplicate clusters and people), {len(tr)} for training")
        return tr, held
    return list(range(len(samples))), []


def _image_vectors(backbone: Path, samples: list[Sample], feats: list[PhotoFeatures]) -> list[PhotoFeatures]:
    """The held-out photos' features with the whole-image vector from the fine-tuned backbone (ONNX)."""
    emb = ImageEmbedder(backbone, threads=2)
    out = []
    for s, f in zip(samples, feats):
        out.append(replace(f, image_vector=emb.embed(open_image(s.path).image)))
    return out


def _table_row(row: dict) -> str:
    return (f"{row['epoch']:>5}  {row['phase']:<8} {row['train_loss']:>10.4f} {row['valid_loss']:>10.4f} "
            f"{row['error_rate']:>10.4f} {row['seconds']:>8.1f}")


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> FinetuneResult:
    """Scan, split, fine-tune, export to ONNX inside the bundle, measure on the hold-out, save. Image mode only."""
    if cfg.epochs + cfg.frozen_epochs < 1 or cfg.epochs < 0 or cfg.frozen_epochs < 0:
        raise ValueError(f"fine-tuning needs at least one epoch (epochs {cfg.epochs}, frozen {cfg.frozen_epochs})")
    check_config(cfg, writes=(ARRAYS_FILE, BACKBONE_FILE))
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ds = scan(cfg.data, cfg.negatives)
    log(f"{len(ds.samples)} photos in {len(ds.counts())} labels under {cfg.data}"
        + (f" (+ negatives from {cfg.negatives})" if cfg.negatives else ""))
    table = load_table(cfg, ds, log)  # cached features: the leak-free split needs them
    for path, reason in table.skipped:
        log(f"skipped {path}: {reason}")
    train_idx, held_idx = _split(cfg, table.samples, table.feats, log)
    depth = _leaf_depths(table.samples)
    rows = [i for i in train_idx if len(table.samples[i].label) == depth[table.samples[i].group]]
    classes = sorted({table.samples[i].leaf for i in rows})
    if len(classes) < 2:
        raise ValueError(f"{cfg.data}: need at least two labels to fine-tune, found {classes}")
    sub_s, sub_f = [table.samples[i] for i in rows], [table.feats[i] for i in rows]
    tr, va = holdout_split(sub_s, sub_f, cfg.valid, cfg.seed)
    if not va or not tr:
        raise ValueError(f"{cfg.data}: too few photos to keep {cfg.valid:.0%} aside for early stopping "
                         f"({len(rows)} labelled photos)")
    t_data = time.time()
    train = _pixels([sub_s[i] for i in tr], classes, STORE, log)
    valid = _pixels([sub_s[i] for i in va], classes, SIZE, log)
    log(f"fine-tuning EfficientNet-Lite0 on {len(train.y)} photos ({len(classes)} classes), watching "
        f"{len(valid.y)}; photos loaded in {time.time() - t_data:.1f} s")

    net = load_net(len(classes)).to(memory_format=torch.channels_last)
    aug = _augment()
    bs = min(cfg.batch_size, len(train.y))
    steps = len(train.y) // bs
    history: list[dict] = []
    log(f"{'epoch':>5}  {'phase':<8} {'train_loss':>10} {'valid_loss':>10} {'error_rate':>10} {'seconds':>8}")
    before = dict(zip(("valid_loss", "error_rate"), _evaluate(net, valid, 64)))
    log(f"{'-':>5}  {'start':<8} {'':>10} {before['valid_loss']:>10.4f} {before['error_rate']:>10.4f}")
    best, best_loss, stale, stopped = None, math.inf, 0, None
    phases = [("frozen", cfg.frozen_epochs), ("unfrozen", cfg.epochs)]
    for phase, n_epochs in phases:
        if n_epochs <= 0 or stopped:
            continue
        frozen = phase == "frozen"
        _set_frozen(net, frozen)
        if frozen:
            groups = [{"params": list(net._fc.parameters()), "lr": cfg.lr}]
            pct, div = 0.99, 25.0
        else:
            groups = _param_groups(net, cfg.lr / 2)
            pct, div = 0.3, 5.0
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=n_epochs * steps, pct_start=pct, div_factor=div,
            final_div_factor=1e5, base_momentum=0.85, max_momentum=0.95)
        for _ in range(n_epochs):
            last = history[-1]["seconds"] if history else 0.0
            if cfg.max_minutes and history and time.time() - t0 + last > cfg.max_minutes * 60:
                stopped = f"time limit of {cfg.max_minutes:g} min"
                break
            te = time.time()
            losses = _run_phase(net, train, aug, opt, sched, bs, frozen, gen,
                                f"epoch {len(history)} ({phase})" if cfg.progress else None)
            v_loss, v_err = _evaluate(net, valid, 64)
            row = {"epoch": len(history), "phase": phase, "train_loss": float(np.mean(losses)),
                   "valid_loss": v_loss, "error_rate": v_err, "seconds": round(time.time() - te, 1),
                   "step_losses": [round(v, 4) for v in losses]}
            history.append(row)
            log(_table_row(row))
            if v_loss < best_loss:
                best, best_loss, stale = copy.deepcopy(net.state_dict()), v_loss, 0
            elif not frozen:
                stale += 1
                if stale >= cfg.patience:
                    stopped = f"no better validation loss for {cfg.patience} epochs"
                    break
    if stopped:
        log(f"stopped early: {stopped}")
    net.load_state_dict(best)
    best_epoch = min(history, key=lambda r: r["valid_loss"])["epoch"]
    log(f"kept epoch {best_epoch} (validation loss {best_loss:.4f})")
    net.eval()
    t_train = time.time() - t0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = export_onnx(Backbone(net).eval(), tmp / BACKBONE_FILE)
        onnx_diff = _check_onnx(net, backbone, valid)
        log(f"exported {BACKBONE_FILE} ({backbone.stat().st_size / 1e6:.1f} MB); "
            f"max |onnxruntime - torch| {onnx_diff:.1e}")
        if onnx_diff > ONNX_TOLERANCE:
            raise RuntimeError(f"the exported ONNX disagrees with torch by {onnx_diff:.2e} (> {ONNX_TOLERANCE})")
        fc = net._fc
        head = LinearHead(classes=classes, W=fc.weight.detach().double().numpy(), b=fc.bias.detach().double().numpy(),
                          mean=np.zeros(fc.in_features), scale=np.ones(fc.in_features))
        train_samples = [table.samples[i] for i in train_idx]
        bundle = ModelBundle(manifest=_manifest(train_samples, head, backbone, len(train.y)),
                             arrays=head.to_arrays("image"), extra_files={BACKBONE_FILE: backbone})
        summary = {
            "data": str(cfg.data), "negatives": cfg.negatives, "photos": len(table.samples),
            "counts": {**ds.counts()}, "skipped": [{"path": p, "reason": r} for p, r in table.skipped],
            "mode": "image", "method": "finetune", "holdout": cfg.holdout, "split": cfg.split, "seed": cfg.seed,
            "train_photos": len(train.y), "valid_photos": len(valid.y), "heldout_photos": len(held_idx),
            "finetune": {"recipe": "fastai fine_tune: frozen body, then discriminative lrs + one-cycle",
                         "frozen_epochs": cfg.frozen_epochs, "epochs": cfg.epochs, "lr": cfg.lr,
                         "batch_size": bs, "threads": cfg.threads, "stopped": stopped, "best_epoch": best_epoch,
                         "before": before, "history": history, "onnx_max_abs_diff": onnx_diff},
            "seconds": {"train": round(t_train, 1)}, "python": platform.python_version(),
            "torch": torch.__version__,
        }
        bundle.manifest["training"] = summary
        if held_idx:
            bundle.folder = tmp  # Model finds backbone.onnx here before the bundle is saved
            held_s = [table.samples[i] for i in held_idx]
            held_f = _image_vectors(backbone, held_s, [table.feats[i] for i in held_idx])
            metrics = evaluate_split(Model(bundle), held_s, held_f)
            bundle.manifest["metrics"] = {"heldout": metrics}
            log(format_metrics(metrics))
            bundle.extra_files[SPLIT_FILE] = save_split(
                tmp / SPLIT_FILE, [table.feats[i].sha256 for i in train_idx],
                [table.feats[i].sha256 for i in held_idx], cfg.seed, cfg.holdout)
            bundle.manifest["split_file"] = SPLIT_FILE
        folder = bundle.save(cfg.out)
    summary["seconds"]["total"] = round(time.time() - t0, 1)
    log(f"saved {folder} in {summary['seconds']['total']} s (training {t_train:.1f} s)")
    return FinetuneResult(folder=folder, manifest=bundle.manifest, net=net)


def _check_onnx(net: nn.Module, backbone: Path, valid: _Data) -> float:
    """Max |onnxruntime - torch| over the outputs (features, feature_map, logits) on a few validation photos."""
    x = _normalise(valid.x[:8].float() / 255.0)
    with torch.no_grad():
        want = [t.numpy() for t in Backbone(net).eval()(x)]
    got = ImageEmbedder(backbone).session.run(None, {"image": np.ascontiguousarray(x.numpy())})
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def _manifest(samples: list[Sample], head: LinearHead, backbone: Path, rows: int) -> dict:
    """The image-mode manifest of xory.train.fit_bundle, with the fine-tuned backbone named as a bundle file."""
    top = sorted({s.group for s in samples}, key=lambda g: (g == NEITHER, g))
    tree: dict[str, set[str]] = {t: set() for t in top}
    for s in samples:
        if len(s.label) > 1:
            tree[s.group].add("/".join(s.label[1:]))
    return {
        "labels": {"top": top, "tree": {k: sorted(v) for k, v in tree.items()}},
        "mode": "image",
        "features": {
            "faces": None,
            "image": {"name": "efficientnet_lite0 (fine-tuned)", "file": BACKBONE_FILE,
                      "sha256": file_sha256(backbone), "input": "224x224 squash, (x-127.5)/127.5"},
        },
        "heads": {"face": None,
                  "image": {"classes": head.classes, "input": "efficientnet_lite0_finetuned_1280",
                            "finetuned": True, "rows": rows}},
        "aggregation": "no faces: the fine-tuned network's classifier on the whole photo (a top-level class is "
                       "the sum of its members)",
    }
