"""Fine-tuning an EfficientNet encoder with a metric-learning loss, cheaply enough for a CPU.

The early stages are frozen and run once per image (their outputs are cached, optionally on disk);
only the last `trainable_stages` stages, the head conv and its norm are trained, in eval mode (the
batch-norm statistics stay those of ImageNet, which small medical batches could not estimate well).
The loss acts on the pooled, L2-normalised feature the product indexes, so the saved state dict is a
plain timm feature model that `create_encoder(name, checkpoint=FILE)` loads like any checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from embeddings.encoder import Encoder
from embeddings.types import EmbeddingsError

log = logging.getLogger(__name__)

LOSSES = ("proxy_nca", "supcon")

# score(database_vectors, database_labels, query_vectors, query_labels) -> higher is better (val mAP@k).
ScoreFunction = Callable[
    [npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]], float
]


class ImageSource(Protocol):
    """Anything indexable that yields float32 H x W x 3 [0, 1] images (a dataset, a list of arrays)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters; the defaults train in minutes on two CPU cores for a few thousand images."""

    input_size: int = 128
    trainable_stages: int = 2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4
    proxy_lr: float = 3e-2
    weight_decay: float = 1e-4
    loss: str = "proxy_nca"
    temperature: float = 0.1
    seed: int = 0
    val_database: int = 2000

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise EmbeddingsError(f"unknown loss {self.loss!r}; choose one of {list(LOSSES)}")
        if self.epochs < 1 or self.batch_size < 2 or self.trainable_stages < 1:
            raise EmbeddingsError("epochs >= 1, batch_size >= 2 and trainable_stages >= 1 are required")


@dataclass
class FinetuneOutcome:
    """The trained feature model, the per-epoch history and every image's vector before and after."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    baseline_score: float
    vectors_before: npt.NDArray[np.float32]
    vectors_after: npt.NDArray[np.float32]
    elapsed_s: float
    config: FinetuneConfig
    notes: dict[str, Any] = field(default_factory=dict)


class _SplitModel:
    """A timm EfficientNet cut into a frozen trunk and a trainable head ending in the pooled feature."""

    def __init__(self, model: nn.Module, trainable_stages: int) -> None:
        blocks = getattr(model, "blocks", None)
        if blocks is None or not all(hasattr(model, a) for a in ("conv_stem", "bn1", "conv_head", "bn2")):
            raise EmbeddingsError(
                f"fine-tuning supports timm EfficientNet-style models (blocks, conv_head); got {type(model).__name__}"
            )
        stages = list(blocks.children())
        if trainable_stages > len(stages):
            raise EmbeddingsError(f"the model has {len(stages)} stages; trainable_stages={trainable_stages}")
        self.model = model
        self.conv_stem = cast(nn.Module, model.conv_stem)
        self.bn1 = cast(nn.Module, model.bn1)
        self.conv_head = cast(nn.Module, model.conv_head)
        self.bn2 = cast(nn.Module, model.bn2)
        self.global_pool = cast(nn.Module, model.global_pool)
        self.cut = len(stages) - trainable_stages
        self.trunk_stages = stages[: self.cut]
        self.head_stages = stages[self.cut :]
        head_modules: list[nn.Module] = [*self.head_stages, self.conv_head, self.bn2]
        self.head_parameters = [p for m in head_modules for p in m.parameters()]

    @torch.inference_mode()
    def trunk(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(batch))
        for stage in self.trunk_stages:
            x = stage(x)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for stage in self.head_stages:
            x = stage(x)
        x = self.bn2(self.conv_head(x))
        pooled: torch.Tensor = self.global_pool(x)
        return pooled.flatten(1)


def _trunk_features(
    split: _SplitModel, encoder: Encoder, images: ImageSource, batch: int, progress: bool
) -> torch.Tensor:
    from tqdm import tqdm

    chunks = []
    bar = tqdm(total=len(images), desc="frozen trunk", unit="img", disable=not progress)
    for start in range(0, len(images), batch):
        stop = min(start + batch, len(images))
        tensors = [
            encoder.preprocessing(
                torch.from_numpy(np.ascontiguousarray(images[i], dtype=np.float32)).permute(2, 0, 1)
            )
            for i in range(start, stop)
        ]
        chunks.append(split.trunk(torch.stack(tensors).to(encoder.device)).to("cpu", torch.float16))
        bar.update(stop - start)
    bar.close()
    return torch.cat(chunks)


def load_or_compute_trunk(
    split: _SplitModel,
    encoder: Encoder,
    images: ImageSource,
    *,
    cache_path: Path | None,
    batch: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Frozen-trunk outputs of every image (float16, CPU), reused from `cache_path` when it matches."""
    if cache_path is not None and cache_path.is_file():
        cached = torch.load(cache_path, weights_only=True)
        if isinstance(cached, torch.Tensor) and cached.shape[0] == len(images):
            log.info("frozen-trunk features from cache %s", cache_path)
            return cached
    features = _trunk_features(split, encoder, images, batch, progress)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        torch.save(features, tmp)
        tmp.replace(cache_path)
    return features


def proxy_nca_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Normalised-softmax Proxy-NCA: cross-entropy of cosine(embedding, class proxy) / temperature."""
    logits = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T / temperature
    return F.cross_entropy(logits, labels)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) over one batch; anchors without a positive skipped."""
    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    mean_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(mean_log_prob[has_positive] / counts[has_positive]).mean()


def _embed_head(
    split: _SplitModel, features: torch.Tensor, device: torch.device, batch: int = 256
) -> npt.NDArray[np.float32]:
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            chunk = features[start : start + batch].to(device, torch.float32)
            out.append(F.normalize(split.head(chunk), dim=1).cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 0), np.float32)


def finetune_encoder(
    encoder: Encoder,
    images: ImageSource,
    labels: Sequence[int] | npt.NDArray[np.int64],
    train: npt.NDArray[np.int64],
    val: npt.NDArray[np.int64],
    score: ScoreFunction,
    config: FinetuneConfig | None = None,
    *,
    trunk_cache: Path | None = None,
    progress: bool = True,
) -> FinetuneOutcome:
    """Train `encoder`'s last stages on images[train] and keep the epoch with the best val score.

    `score` is given (database = train vectors, at most `config.val_database` of them, queries = val
    vectors) after every epoch and before the first (the baseline); images[val] must hold other
    patients than images[train]. The encoder's model is changed in place and returned;
    `vectors_before/after` cover every image at the training input size, so held-out images can be
    scored without re-running the frozen trunk.
    """
    config = config or FinetuneConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    label_array = np.asarray(labels, dtype=np.int64)
    if len(train) < 2 or len(val) < 1:
        raise EmbeddingsError("fine-tuning needs at least 2 training and 1 validation image")
    model = encoder.model
    model.eval()
    split = _SplitModel(model, config.trainable_stages)
    features = load_or_compute_trunk(split, encoder, images, cache_path=trunk_cache, progress=progress)
    device = encoder.device

    # Validation ranks val queries against at most `val_database` training images (a fixed sample),
    # so that an epoch's check costs little next to its training steps on a CPU.
    reference = np.sort(rng.choice(train, size=min(len(train), config.val_database), replace=False))
    checked = np.concatenate([reference, val])

    def validate() -> float:
        vectors = _embed_head(split, features[torch.from_numpy(checked)], device)
        return score(
            vectors[: len(reference)], label_array[reference], vectors[len(reference) :], label_array[val]
        )

    vectors_before = _embed_head(split, features, device)
    baseline = validate()
    history: list[dict[str, float]] = [{"epoch": 0.0, "loss": math.nan, "val_score": baseline}]
    best_score, best_epoch = baseline, 0
    best_state = copy.deepcopy(model.state_dict())
    log.info("fine-tune: baseline val score %.4f", baseline)

    for parameter in split.head_parameters:
        parameter.requires_grad_(True)
    n_classes = int(label_array.max()) + 1
    groups: list[dict[str, Any]] = [
        {"params": split.head_parameters, "lr": config.lr, "weight_decay": config.weight_decay}
    ]
    proxies: torch.Tensor | None = None
    if config.loss == "proxy_nca":
        proxies = nn.Parameter(torch.randn(n_classes, encoder.dim, device=device) * 0.01)
        groups.append({"params": [proxies], "lr": config.proxy_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=config.epochs * steps_per_epoch,
        pct_start=0.15,
    )
    try:
        for epoch in range(1, config.epochs + 1):
            order = rng.permutation(train)
            losses = []
            for start in range(0, len(order), config.batch_size):
                chosen = order[start : start + config.batch_size]
                if len(chosen) < 2:
                    continue
                batch = features[torch.from_numpy(chosen)].to(device, torch.float32)
                flip = torch.from_numpy(rng.random(len(chosen)) < 0.5).to(device)
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
                target = torch.from_numpy(label_array[chosen]).to(device)
                output = split.head(batch)
                if proxies is not None:
                    loss = proxy_nca_loss(output, target, proxies, config.temperature)
                else:
                    loss = supcon_loss(output, target, config.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            value = validate()
            mean_loss = float(np.mean(losses)) if losses else math.nan
            history.append({"epoch": float(epoch), "loss": mean_loss, "val_score": value})
            log.info("fine-tune epoch %d: loss %.4f, val score %.4f", epoch, mean_loss, value)
            if value > best_score:
                best_score, best_epoch = value, epoch
                best_state = copy.deepcopy(model.state_dict())
    finally:
        for parameter in split.head_parameters:
            parameter.requires_grad_(False)
    model.load_state_dict(best_state)
    vectors_after = _embed_head(split, features, device) if best_epoch else vectors_before
    return FinetuneOutcome(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_score=best_score,
        baseline_score=baseline,
        vectors_before=vectors_before,
        vectors_after=vectors_after,
        elapsed_s=time.perf_counter() - started,
        config=config,
    )


def save_checkpoint(model: nn.Module, folder: Path, stem: str, card: dict[str, Any]) -> Path:
    """Save the feature model as `<folder>/<stem>-<YYYYMMDD>-<sha8>.pth` plus a `.json` card beside it.

    The 8 hex digits are the file's own sha256 prefix, which is exactly the identity
    `create_encoder(..., checkpoint=FILE)` gives it, so the catalog names the weights unambiguously.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        torch.save(state, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
        path = folder / f"{stem}-{datetime.now(UTC):%Y%m%d}-{digest}.pth"
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    full_card = {"checkpoint": path.name, "sha256_prefix": digest, **card}
    path.with_suffix(".json").write_text(json.dumps(full_card, indent=2, default=str) + "\n")
    return path


def config_card(config: FinetuneConfig) -> dict[str, Any]:
    """The hyper-parameters as a plain dict for the checkpoint card."""
    return asdict(config)
