"""Measuring and learning from labels: eval, finetune (the encoder) and train-head (head and vote)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.cli.options import (
    Checkpoint,
    DataDir,
    Dedupe,
    Encoder,
    HashColumn,
    IgnoreLabel,
    Include,
    LabelColumn,
    LabeledManifest,
    MinClassCount,
    PathColumn,
    PatientColumn,
    settings_from,
)
from indexer.cli.runtime import fail, opened_catalog, setup_logging
from indexer.errors import IndexerError
from indexer.settings import IndexerSettings

if TYPE_CHECKING:
    from indexer.evaluation.datasets import ManifestSpec


def _include_filters(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    filters = []
    for value in values or []:
        column, sep, wanted = value.partition("=")
        if not sep:
            raise fail(f"--include takes COLUMN=VALUE, got {value!r}")
        filters.append((column.strip(), wanted.strip()))
    return tuple(filters)


def _manifest_spec(
    path_column: str,
    label_column: str,
    patient_column: str | None,
    split_column: str | None,
    hash_column: str | None,
    include: list[str] | None,
    ignore_label: list[str] | None,
) -> ManifestSpec:
    """How the labeled data's manifest is read, from the options eval and finetune share."""
    from indexer.evaluation.datasets import ManifestSpec

    return ManifestSpec(
        path_column=path_column,
        label_column=label_column,
        patient_column=patient_column,
        split_column=split_column,
        hash_column=hash_column,
        include=_include_filters(include),
        ignore_labels=tuple(ignore_label or ()),
    )


def evaluate(
    data: Annotated[
        Path, typer.Option(help="Labeled data: a folder per class, a folder + --manifest, or a .npz")
    ],
    manifest: LabeledManifest = None,
    path_column: PathColumn = "path",
    label_column: LabelColumn = "label",
    patient_column: PatientColumn = None,
    split_column: Annotated[
        str | None,
        typer.Option(help="Manifest column with train/val/test (train = database, test = queries)"),
    ] = None,
    hash_column: HashColumn = None,
    include: Include = None,
    ignore_label: IgnoreLabel = None,
    dedupe: Dedupe = False,
    min_class_count: MinClassCount = 1,
    k: Annotated[int, typer.Option(help="Neighbours for the kNN vote and the per-class table")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the patient-grouped split (without a split column)")] = 0,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    image_size: Annotated[
        int | None, typer.Option(help="Model input size in px (default: the encoder's)")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a markdown report here")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for the confusion and precision-recall plots")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Reuse embeddings saved here (keyed by data, encoder, size)")
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(help="Use a fixed random subsample of this many images (CPU budgets)")
    ] = None,
    feedback_rounds: Annotated[
        int,
        typer.Option(
            min=0, help="Relevance feedback: rounds of an oracle marking the first k neighbours by label"
        ),
    ] = 0,
    feedback_weights: Annotated[
        str | None,
        typer.Option(help="Rocchio alpha,beta,gamma for --feedback-rounds (default: the product's)"),
    ] = None,
    postprocess: Annotated[
        str | None,
        typer.Option(
            metavar="SPEC",
            help="Retrieve through the index with this label-free post-processing fitted on the database "
            "(train) only, as `rebuild-index --postprocess` serves it: none, or pcaw, dba, aqe, rerank joined by '+'",
        ),
    ] = None,
) -> None:
    """Measure retrieval quality on a labeled dataset (precision@k, mAP@k, mMV@k, kNN vote, F1, AUC)."""
    setup_logging()
    from indexer.evaluation.feedback import feedback_markdown
    from indexer.evaluation.report import to_markdown, write_json, write_plots
    from indexer.evaluation.runner import EvaluationConfig, run_evaluation
    from indexer.vectors.feedback import DEFAULT_WEIGHTS, FeedbackWeights

    try:
        weights = FeedbackWeights.parse(feedback_weights) if feedback_weights else DEFAULT_WEIGHTS
        if postprocess is not None:
            from indexer.vectors.index_postprocess import parse_postprocess

            postprocess = str(parse_postprocess(postprocess))
    except ValueError as exc:
        raise fail(str(exc)) from exc

    config = EvaluationConfig(
        data=data,
        manifest=manifest,
        spec=_manifest_spec(
            path_column, label_column, patient_column, split_column, hash_column, include, ignore_label
        ),
        k=k,
        encoder=encoder or IndexerSettings().encoder,
        checkpoint=checkpoint,
        image_size=image_size,
        seed=seed,
        dedupe=dedupe,
        min_class_count=min_class_count,
        cache_dir=cache_dir,
        max_images=max_images,
        feedback_rounds=feedback_rounds,
        feedback_weights=weights,
        postprocess=postprocess,
    )
    try:
        result = run_evaluation(config)
    except (IndexerError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    if json_path is not None:
        write_json(result, json_path)  # the feedback rounds go in its info
    feedback = result.info.pop("feedback", None)
    text = to_markdown(result) + (feedback_markdown(feedback) if feedback else "")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    if plots is not None:
        write_plots(result, plots)
    typer.echo(text)


def finetune(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labeled data: a folder per class, a folder + --manifest, or a .npz (default: --from-catalog)"
        ),
    ] = None,
    from_catalog: Annotated[
        bool,
        typer.Option(
            "--from-catalog",
            help="Train on the catalog's images labeled with their case diagnosis (single-label cases), "
            "held out by patient; the default without --data",
        ),
    ] = False,
    manifest: LabeledManifest = None,
    path_column: PathColumn = "path",
    label_column: LabelColumn = "label",
    patient_column: PatientColumn = None,
    split_column: Annotated[str | None, typer.Option(help="Manifest column with train/val/test")] = None,
    hash_column: HashColumn = None,
    include: Include = None,
    ignore_label: IgnoreLabel = None,
    dedupe: Dedupe = False,
    min_class_count: MinClassCount = 1,
    max_images: Annotated[
        int | None, typer.Option(help="Use a fixed random subsample of this many images (CPU budgets)")
    ] = None,
    loss: Annotated[str, typer.Option(help="proxy_nca or supcon")] = "proxy_nca",
    epochs: Annotated[int, typer.Option(help="Training epochs (the best on validation is kept)")] = 10,
    image_size: Annotated[int, typer.Option(help="Training input size in px (small is fast on CPU)")] = 128,
    trainable_stages: Annotated[int, typer.Option(help="How many of the last stages to train")] = 2,
    batch_size: Annotated[int, typer.Option(help="Images per step")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the trained stages")] = 3e-4,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the batches")] = 0,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the checkpoint and its card go (default: DATA_DIR/encoders)")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Keep frozen-trunk features here for re-runs")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the card (with test scores) here")
    ] = None,
) -> None:
    """Fine-tune the encoder on labeled data (metric learning), validate on held-out patients, save it.

    Without --data it trains on the catalog itself (--from-catalog): every image of a case with exactly
    one diagnosis label, re-decoded from its source; multi-label and unlabeled cases, and images whose
    source is gone, are left out and counted in the card."""
    setup_logging()
    import json

    from embeddings import EmbeddingsError
    from embeddings.training.finetune import FinetuneConfig
    from indexer.evaluation.finetuning import run_finetune
    from indexer.evaluation.runner import EvaluationConfig

    if data is not None and from_catalog:
        raise fail("pass either --data or --from-catalog, not both")
    settings = settings_from(data_dir, encoder, checkpoint)
    catalog_url = settings.resolved_database_url if data is None else None
    if catalog_url is not None and manifest is not None:
        raise fail("--manifest goes with --data; the catalog already knows its labels")
    eval_config = EvaluationConfig(
        data=data if data is not None else settings.data_dir,
        from_catalog=catalog_url,
        manifest=manifest,
        spec=_manifest_spec(
            path_column, label_column, patient_column, split_column, hash_column, include, ignore_label
        ),
        encoder=settings.encoder,
        checkpoint=settings.checkpoint,
        seed=seed,
        dedupe=dedupe,
        min_class_count=min_class_count,
        max_images=max_images,
        device=settings.device,
    )
    try:
        config = FinetuneConfig(
            input_size=image_size,
            trainable_stages=trainable_stages,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            seed=seed,
        )
        report = run_finetune(
            eval_config,
            config,
            output_dir=output_dir or settings.data_dir / "encoders",
            trunk_cache_dir=cache_dir,
        )
    except (IndexerError, EmbeddingsError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps({**report.card, "checkpoint_path": str(report.checkpoint)}, indent=2) + "\n"
        )
    card = report.card
    typer.echo(
        f"held-out test mAP@10: {card['test_map@10_before']:.4f} before -> {card['test_map@10_after']:.4f} after "
        f"(val mAP@10 {card['val_map@10_before']:.4f} -> {card['val_map@10']:.4f}, best epoch {card['best_epoch']})"
    )
    if "used_images" in card:
        typer.echo(
            f"catalog: {card['used_images']} of {card['catalog_images']} images used; left out "
            f"{card['left_out_multi_label']} of multi-label cases, {card['left_out_unlabeled']} unlabeled, "
            f"{card['left_out_source_missing']} whose source is gone"
        )
    typer.echo(f"checkpoint: {report.checkpoint}")
    typer.echo(f"use it: medcbir reindex --encoder {eval_config.encoder} --checkpoint {report.checkpoint}")


def _recalls(recall: dict[str, float | None]) -> str:
    return ", ".join(f"{label} {'n/a' if r is None else f'{r:.2f}'}" for label, r in recall.items())


def train_head(
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    seed: Annotated[int, typer.Option(help="Seed of the patient-grouped splits")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of patients held out for validation")] = 0.2,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write both cards (head and vote) here")
    ] = None,
) -> None:
    """Train a linear head on the stored embeddings and calibrate the kNN vote; saved as a new version."""
    setup_logging()
    import json

    from embeddings import EmbeddingsError, create_encoder
    from indexer.prediction.versions import train_predictors

    settings = settings_from(data_dir, encoder, checkpoint)
    try:
        name = create_encoder(settings.encoder, checkpoint=settings.checkpoint, device="cpu").name
        with opened_catalog(settings) as catalog:
            result = train_predictors(catalog, name, settings.data_dir, seed=seed, val_fraction=val_fraction)
    except (IndexerError, EmbeddingsError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"saved {result.directory}")
    if result.head is None:
        typer.echo("head: not trained (needs >= 2 diagnoses with images of >= 2 patients each)")
    else:
        card = result.head.card
        typer.echo(
            f"head: {len(result.head.labels)} classes, {card['n_train']} train / {card['n_val']} val images "
            f"({card['n_train_patients']} / {card['n_val_patients']} patients, none shared); "
            f"val accuracy {card['val_accuracy']:.3f} (chance {card['chance_accuracy']:.3f}), balanced accuracy "
            f"{card['val_balanced_accuracy']:.3f} ({card['class_weighting']} class weights); "
            f"val ECE {card['val_ece_before']:.3f} -> {card['val_ece_after']:.3f} (T={result.head.temperature:.3g})"
        )
        typer.echo("  val recall per class: " + _recalls(card["val_per_class_recall"]))
        if not card["temperature_kept"]:
            typer.echo(
                f"  temperature {card['temperature_fitted']:.3g} not kept: it did not lower the cross-fitted "
                "validation ECE; T = 1"
            )
        if card["val_accuracy"] <= card["chance_accuracy"] + 0.01:
            typer.echo("  warning: the head is no better than always answering the most frequent label")
        if card["skipped_multi_label_images"] or card["left_out_classes"]:
            typer.echo(
                f"  left out: {card['skipped_multi_label_images']} multi-label images, "
                f"classes with < 2 images: {', '.join(card['left_out_classes']) or 'none'}"
            )
    vote = result.vote
    if "holdout_ece_after" in vote.card:
        weights = (
            "similarity weights (uncalibrated)" if vote.temperature is None else f"T={vote.temperature:g}"
        )
        typer.echo(
            f"vote: {weights}, eps={vote.epsilon:g}; holdout accuracy "
            f"{vote.card['holdout_accuracy_before']:.3f} -> {vote.card['holdout_accuracy']:.3f}, balanced "
            f"{vote.card['holdout_balanced_accuracy_before']:.3f} -> {vote.card['holdout_balanced_accuracy']:.3f}; "
            f"holdout ECE {vote.card['holdout_ece_before']:.3f} -> "
            f"{vote.card['holdout_ece_after']:.3f} ({vote.card['n_holdout']} held-out images)"
        )
        typer.echo("  holdout recall per class: " + _recalls(vote.card["holdout_per_class_recall"]))
        typer.echo(f"  fit guard: {vote.card['fit']['guard']}")
    else:
        typer.echo(f"vote: not calibrated ({vote.card.get('note', 'too few labeled images')})")
    typer.echo(
        f"out of distribution below top similarity {vote.ood_similarity:.3f} "
        f"(the {vote.card['ood_quantile']:.0%} quantile of stored images' best match to other patients)"
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps({"head": result.head.card if result.head else None, "vote": vote.__dict__}, indent=2)
        )
