"""`medcbir eval` as a function: load a labeled dataset, embed it with the product encoder, score retrieval."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embeddings import ImageEncoder, create_encoder
from indexer.evaluation.datasets import (
    LabeledDataset,
    ManifestSpec,
    drop_exact_duplicates,
    drop_rare_classes,
    load_catalog_dataset,
    load_dataset,
)
from indexer.evaluation.feedback import evaluate_feedback
from indexer.evaluation.protocol import (
    DEFAULT_SEED,
    EvaluationResult,
    embed_dataset,
    evaluate_vectors,
    make_split,
)
from indexer.vectors.feedback import DEFAULT_WEIGHTS, FeedbackWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and how; the defaults are the product's encoder at its own input size."""

    data: Path
    manifest: Path | None = None
    spec: ManifestSpec = field(default_factory=ManifestSpec)
    k: int = 10
    encoder: str = "efficientnet_lite0"
    checkpoint: Path | None = None
    image_size: int | None = None
    seed: int = DEFAULT_SEED
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    dedupe: bool = False
    min_class_count: int = 1
    max_images: int | None = None
    cache_dir: Path | None = None
    device: str | None = None
    batch_size: int = 32
    # A catalog database URL: the dataset is the catalog's single-label cases (then `data` only names
    # the data folder in reports).
    from_catalog: str | None = None
    # Relevance feedback: oracle rounds on the test queries (0: none), the Rocchio weights, and
    # whether to try the weight grid on the val queries too.
    feedback_rounds: int = 0
    feedback_weights: FeedbackWeights = DEFAULT_WEIGHTS
    feedback_tune: bool = True
    # A label-free post-processing SPEC of the index (fitted on the database = train only); None: plain.
    postprocess: str | None = None


def prepare_dataset(config: EvaluationConfig) -> LabeledDataset:
    """The dataset as evaluated: loaded, optionally de-duplicated, rare classes optionally dropped."""
    if config.from_catalog is not None:
        dataset = load_catalog_dataset(config.from_catalog)
    else:
        dataset = load_dataset(config.data, config.manifest, config.spec)
    if config.dedupe:
        before = len(dataset)
        dataset = drop_exact_duplicates(dataset)
        log.info("de-duplicated %s: %d -> %d images", dataset.name, before, len(dataset))
    dataset = drop_rare_classes(dataset, config.min_class_count)
    if config.max_images is not None and len(dataset) > config.max_images:
        # A fixed subsample (seed 0, whatever --seed says), so that runs of several seeds share it.
        chosen = np.random.default_rng(0).choice(len(dataset), size=config.max_images, replace=False)
        dataset = dataset.subset(np.sort(chosen))
        log.info("subsampled %s to %d images", dataset.name, len(dataset))
    return dataset


def build_encoder(config: EvaluationConfig) -> ImageEncoder:
    """The product's encoder (registry name, optional checkpoint), at `image_size` when given."""
    from embeddings.training import with_input_size

    encoder = create_encoder(
        config.encoder, device=config.device, checkpoint=config.checkpoint, batch_size=config.batch_size
    )
    return with_input_size(encoder, config.image_size)


def run_evaluation(
    config: EvaluationConfig, encoder: ImageEncoder | None = None, *, progress: bool = True
) -> EvaluationResult:
    """Load, split, embed (cached), retrieve with FAISS and score; `encoder` overrides the config's."""
    started = time.perf_counter()
    dataset = prepare_dataset(config)
    split = make_split(
        dataset, seed=config.seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
    )
    chosen = encoder if encoder is not None else build_encoder(config)
    size = getattr(chosen, "input_size", None)
    vectors = embed_dataset(
        dataset,
        chosen,
        cache_dir=config.cache_dir,
        cache_tag=f"-{size[0]}px" if size else "",
        progress=progress,
    )
    result = evaluate_vectors(dataset, vectors, split, k=config.k, postprocess=config.postprocess)
    if config.feedback_rounds > 0:
        result.info["feedback"] = evaluate_feedback(
            dataset,
            vectors,
            split,
            rounds=config.feedback_rounds,
            k=config.k,
            weights=config.feedback_weights,
            tune=config.feedback_tune,
        )
    result.info.update(
        {
            "encoder": chosen.name,
            "input_size": f"{size[0]}x{size[1]}" if size else "n/a",
            # the forward pass that embedded (torch / onnxruntime); n/a when every vector came from the cache
            "backend": str(getattr(chosen, "embedded_with", None) or "n/a"),
            "k": config.k,
            "deduplicated": config.dedupe,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    )
    return result
