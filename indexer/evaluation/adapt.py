"""`medcbir adapt` as a function: SimCLR on the archive's own images, no labels, patient-held-out criterion.

The encoder's last stages are trained with NT-Xent (two augmented views of each image are each
other's positive, the other images of the batch the negatives) through a small projector that is
thrown away after training, as in SimCLR; the early stages stay frozen (ImageNet), and the batch-norm
statistics stay ImageNet's, as in `medcbir finetune`. Patients (or, without patient ids, identical
contents) are held out; after each epoch the held-out criterion is the instance recall@1: each held-out
image's first view must retrieve its own second view, by the pooled vector the product indexes, among
all held-out second views (fixed views, the same at every epoch). The best epoch is kept (epoch 0,
the starting weights, included), and saved with a card like a fine-tuned checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from embeddings import EmbeddingsError, create_encoder
from embeddings.encoder import Encoder
from embeddings.training import with_input_size
from embeddings.training.finetune import _SplitModel, save_checkpoint
from imaging import ImagingError
from indexer.errors import IndexerError
from indexer.evaluation.augment import AdaptError, AugmentConfig, augment_views
from indexer.evaluation.datasets import LabeledDataset
from indexer.evaluation.protocol import group_keys
from indexer.evaluation.unlabeled import heldout_split, load_image_folder, load_unlabeled

log = logging.getLogger(__name__)

METHOD = "SimCLR: NT-Xent on two augmented views, 2-layer projector discarded after training"
CRITERION = "held-out instance recall@1 (view 1 retrieves its own view 2 among all held-out view 2s)"

__all__ = [
    "AdaptConfig",
    "AdaptError",
    "AdaptReport",
    "AugmentConfig",
    "heldout_split",
    "load_image_folder",
    "load_unlabeled",
    "run_adapt",
]


@dataclass(frozen=True)
class AdaptConfig:
    """Hyper-parameters; the defaults train a few thousand images in minutes on two CPU cores."""

    input_size: int = 128
    trainable_stages: int = 3
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-4
    projector_lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    heldout_fraction: float = 0.15
    max_heldout: int = 500
    keep: str = "best"
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise AdaptError(f"--image-size {self.input_size} is too small; use 32 px or more")
        if self.epochs < 1 or self.batch_size < 4 or self.trainable_stages < 1:
            raise AdaptError("--epochs >= 1, --batch-size >= 4 and --trainable-stages >= 1 are required")
        if not 0 < self.heldout_fraction < 0.5:
            raise AdaptError(f"--heldout-fraction {self.heldout_fraction} must be in (0, 0.5)")
        if not 0 < self.temperature <= 1 or self.lr <= 0 or self.projector_lr <= 0:
            raise AdaptError("--temperature must be in (0, 1] and the learning rates positive")
        if self.keep not in ("best", "last"):
            raise AdaptError(f"--keep {self.keep!r}: choose 'best' (by the held-out criterion) or 'last'")
        if self.max_heldout < 4:
            raise AdaptError("the held-out criterion needs at least 4 images (max_heldout >= 4)")


@dataclass
class AdaptReport:
    """The saved checkpoint (None when not saved), its card and the positions of each part."""

    checkpoint: Path | None
    card: dict[str, Any]
    model: nn.Module
    train: npt.NDArray[np.int64]
    heldout: npt.NDArray[np.int64]


def nt_xent_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of its image, every other view a negative."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    n = len(first)
    logits = (z @ z.T / temperature).masked_fill(
        torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf")
    )
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def _base_views(
    encoder: Encoder, dataset: LabeledDataset, positions: npt.NDArray[np.int64], progress: bool
) -> tuple[torch.Tensor, list[int]]:
    """Each image as the encoder sees it (resize + centre crop, before normalising), float16; bad files skipped."""
    from tqdm import tqdm

    prep = encoder.preprocessing
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    kept: list[torch.Tensor] = []
    skipped: list[int] = []
    for position in tqdm(positions, desc="decode", unit="img", disable=not progress):
        try:
            pixels = dataset.image(int(position))
        except (ImagingError, IndexerError, OSError) as exc:
            log.warning("adapt: skipped image %s (%s)", dataset.uris[int(position)], type(exc).__name__)
            skipped.append(int(position))
            continue
        tensor = prep(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1))
        kept.append((tensor * std + mean).clamp(0, 1).to(torch.float16))
    if not kept:
        raise AdaptError("no image could be decoded; check the data (every file was skipped)")
    return torch.stack(kept), skipped


class _Views:
    """The trainable part of the encoder on augmented views: normalise, frozen trunk, trained head."""

    def __init__(self, encoder: Encoder, split: _SplitModel, augment: AugmentConfig) -> None:
        prep = encoder.preprocessing
        self.mean = torch.tensor(prep.mean, device=encoder.device).view(1, 3, 1, 1)
        self.std = torch.tensor(prep.std, device=encoder.device).view(1, 3, 1, 1)
        self.split, self.augment, self.device = split, augment, encoder.device

    def view(self, base: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_views(base.float(), self.augment, generator).to(self.device)

    def pooled(self, views: torch.Tensor) -> torch.Tensor:
        # the trunk runs under inference mode; clone() makes its output an ordinary tensor for autograd
        features = self.split.trunk((views - self.mean) / self.std).clone()
        return self.split.head(features)


def _criterion(
    views: _Views, heldout: torch.Tensor, projector: nn.Module, config: AdaptConfig
) -> dict[str, float]:
    """Instance recall@1 and MRR of the pooled vectors, and the NT-Xent loss, on fixed held-out views."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    firsts, seconds, losses = [], [], []
    with torch.no_grad():
        for start in range(0, len(heldout), config.batch_size):
            chunk = heldout[start : start + config.batch_size]
            a = views.pooled(views.view(chunk, generator))
            b = views.pooled(views.view(chunk, generator))
            if len(chunk) > 1:
                losses.append(float(nt_xent_loss(projector(a), projector(b), config.temperature)))
            firsts.append(F.normalize(a, dim=1).cpu())
            seconds.append(F.normalize(b, dim=1).cpu())
    similarity = torch.cat(firsts) @ torch.cat(seconds).T
    own = similarity.diagonal()[:, None]
    rank = (similarity > own).sum(dim=1) + 1
    return {
        "instance_recall@1": float((rank == 1).float().mean()),
        "instance_mrr": float((1.0 / rank.float()).mean()),
        "heldout_nt_xent": float(np.mean(losses)) if losses else math.nan,
    }


def _projector(dim: int, device: torch.device) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 512), nn.ReLU(inplace=True), nn.Linear(512, 128)).to(device)


def train_adapted(
    encoder: Encoder,
    base_train: torch.Tensor,
    base_heldout: torch.Tensor,
    config: AdaptConfig,
    *,
    progress: bool,
) -> tuple[nn.Module, list[dict[str, float]], int]:
    """Train the encoder's last stages with NT-Xent; (model with the kept epoch's weights, history, kept epoch)."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = encoder.model
    model.eval()
    split = _SplitModel(model, config.trainable_stages)
    views = _Views(encoder, split, config.augment)
    projector = _projector(encoder.dim, encoder.device)
    batch = min(config.batch_size, len(base_train))
    steps = len(base_train) // batch
    if steps < 1:
        raise AdaptError(f"{len(base_train)} training images are fewer than a batch; lower --batch-size")

    def score() -> dict[str, float]:
        projector.eval()
        result = _criterion(views, base_heldout, projector, config)
        projector.train()
        return result

    history: list[dict[str, float]] = [{"epoch": 0.0, "train_nt_xent": math.nan, **score()}]
    log.info("adapt: epoch 0 (starting weights) %s", _described(history[0]))
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    parameters = split.head_parameters
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [
            {"params": parameters, "lr": config.lr, "weight_decay": config.weight_decay},
            {
                "params": list(projector.parameters()),
                "lr": config.projector_lr,
                "weight_decay": config.weight_decay,
            },
        ]
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[config.lr, config.projector_lr], total_steps=config.epochs * steps, pct_start=0.1
    )
    bar = tqdm(total=config.epochs * steps * batch, desc="adapt", unit="img", disable=not progress)
    started = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(len(base_train), generator=generator)
            losses = []
            for step in range(steps):
                chosen = base_train[order[step * batch : (step + 1) * batch]]
                first = projector(views.pooled(views.view(chosen, generator)))
                second = projector(views.pooled(views.view(chosen, generator)))
                loss = nt_xent_loss(first, second, config.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                bar.update(batch)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            row = {"epoch": float(epoch), "train_nt_xent": float(np.mean(losses)), **score()}
            history.append(row)
            done = epoch * steps * batch
            rate = done / (time.perf_counter() - started)
            eta = (config.epochs - epoch) * steps * batch / rate
            log.info(
                "adapt: epoch %d/%d %s; %.1f img/s, ETA %.0f s",
                epoch,
                config.epochs,
                _described(row),
                rate,
                eta,
            )
            if config.keep == "last" or _better(row, history[best_epoch]):
                best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
    finally:
        bar.close()
        for parameter in parameters:
            parameter.requires_grad_(False)
    model.load_state_dict(best_state)
    return model, history, best_epoch


def _better(row: dict[str, float], best: dict[str, float]) -> bool:
    return (row["instance_recall@1"], row["instance_mrr"]) > (best["instance_recall@1"], best["instance_mrr"])


def _described(row: dict[str, float]) -> str:
    return (
        f"train NT-Xent {row['train_nt_xent']:.4f}, held-out NT-Xent {row['heldout_nt_xent']:.4f}, "
        f"instance recall@1 {row['instance_recall@1']:.4f}, MRR {row['instance_mrr']:.4f}"
    )


def run_adapt(
    dataset: LabeledDataset,
    config: AdaptConfig,
    *,
    encoder_name: str,
    checkpoint: Path | None = None,
    device: str | None = None,
    max_images: int | None = None,
    output_dir: Path | None = None,
    data_label: str = "",
    progress: bool = True,
) -> AdaptReport:
    """Adapt `encoder_name` (from `checkpoint`) to `dataset`'s images and save `<output_dir>/<name>-adapt-...pth`."""
    started = time.perf_counter()
    if max_images is not None:
        if max_images < 8:
            raise AdaptError(f"--max-images {max_images} is too few; use 8 or more")
        if len(dataset) > max_images:
            # a fixed subsample (seed 0, whatever --seed says), like `medcbir eval --max-images`
            dataset = dataset.subset(
                np.sort(np.random.default_rng(0).choice(len(dataset), max_images, replace=False))
            )
    train, heldout, how = heldout_split(
        dataset, seed=config.seed, fraction=config.heldout_fraction, max_heldout=config.max_heldout
    )
    try:
        base = create_encoder(encoder_name, device=device, checkpoint=checkpoint)
    except EmbeddingsError as exc:
        raise AdaptError(str(exc)) from exc
    encoder = with_input_size(base, config.input_size)
    base_train, skipped_train = _base_views(encoder, dataset, train, progress)
    base_heldout, skipped_heldout = _base_views(encoder, dataset, heldout, progress)
    model, history, best_epoch = train_adapted(encoder, base_train, base_heldout, config, progress=progress)
    groups = group_keys(dataset)
    train_groups = {groups[int(i)] for i in train}
    heldout_groups = {groups[int(i)] for i in heldout}
    card: dict[str, Any] = {
        "method": METHOD,
        "labels_used": False,
        "base_encoder": encoder_name,
        "base_weights": base.name,
        "load_with": f"create_encoder({encoder_name!r}, checkpoint=FILE)",
        "data": data_label,
        "dataset": dataset.name,
        "dataset_identity": dataset.identity(),
        "images": len(dataset),
        "split": how,
        "split_groups": {
            "train": len(train_groups),
            "heldout": len(heldout_groups),
            "shared_train_heldout": len(train_groups & heldout_groups),
        },
        "train_images": len(base_train),
        "heldout_images": len(base_heldout),
        "skipped_unreadable": len(skipped_train) + len(skipped_heldout),
        "criterion": CRITERION,
        "kept": config.keep,
        "best_epoch": best_epoch,
        "criterion_before": history[0]["instance_recall@1"],
        "criterion_kept": history[best_epoch]["instance_recall@1"],
        "history": history,
        "hyperparameters": {k: v for k, v in asdict(config).items() if k != "augment"},
        "augmentations": asdict(config.augment),
        "trained_input_size": config.input_size,
        "seed": config.seed,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}, torch threads {torch.get_num_threads()}, "
        f"device {encoder.device}",
    }
    # where the images came from; never overwrites what the run itself recorded (e.g. its held-out split)
    card.update({key: value for key, value in dataset.provenance.items() if key not in card})
    path = None
    if output_dir is not None:
        path = save_checkpoint(model, output_dir, f"{encoder_name}-adapt-{dataset.name}", card)
    return AdaptReport(checkpoint=path, card=card, model=model, train=train, heldout=heldout)
