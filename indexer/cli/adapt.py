"""`medcbir adapt`: self-supervised (SimCLR) adaptation of the encoder to the archive's own images, no labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    PathColumn,
    PatientColumn,
    settings_from,
)
from indexer.cli.runtime import fail, setup_logging
from indexer.errors import IndexerError


def _data_label(data: Path | None, split: str, data_dir: Path, manifest: Path | None = None) -> str:
    """What the card says was adapted on."""
    if data is None:
        return f"catalog of {data_dir}"
    if manifest is not None:
        return f"{data} + {manifest.name} ({split} part as eval splits it)"
    return f"{data} ({split} split)" if data.suffix.lower() == ".npz" else str(data)


def adapt(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Images to adapt on: a folder (any depth) or a MedMNIST .npz [default: the catalog]"
        ),
    ] = None,
    from_catalog: Annotated[
        bool,
        typer.Option(
            "--from-catalog",
            help="Adapt on the catalog's images (every image whose source is reachable, grouped by patient); "
            "the default without --data",
        ),
    ] = False,
    split: Annotated[
        str,
        typer.Option(
            help="With an .npz or a --manifest: the part whose images are used (train = eval's database, "
            "val, test = eval's queries, or all)"
        ),
    ] = "train",
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="A folder's CSV manifest: adapt only on the part (--split) that `medcbir eval` with the "
            "same manifest options and --split-seed makes, so that eval's queries are never trained on; "
            "the label column only selects images as eval does, no label is used"
        ),
    ] = None,
    path_column: PathColumn = "path",
    label_column: LabelColumn = "label",
    patient_column: PatientColumn = None,
    split_column: Annotated[
        str | None, typer.Option(help="With --manifest: the column with train/val/test, as in eval")
    ] = None,
    hash_column: HashColumn = None,
    include: Include = None,
    ignore_label: IgnoreLabel = None,
    dedupe: Dedupe = False,
    split_seed: Annotated[
        int, typer.Option(help="With --manifest and no split column: eval's --seed (its patient split)")
    ] = 0,
    max_images: Annotated[
        int | None, typer.Option(help="Use a fixed random subsample of this many images (CPU budgets)")
    ] = 2000,
    epochs: Annotated[
        int, typer.Option(help="Training epochs (the best on the held-out criterion is kept)")
    ] = 5,
    image_size: Annotated[int, typer.Option(help="Training input size in px (small is fast on CPU)")] = 128,
    trainable_stages: Annotated[int, typer.Option(help="How many of the last stages to train")] = 3,
    batch_size: Annotated[int, typer.Option(help="Images per step (two views each)")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the trained stages")] = 1e-4,
    temperature: Annotated[float, typer.Option(help="NT-Xent temperature")] = 0.2,
    flip: Annotated[
        bool,
        typer.Option(
            help="Random horizontal flips: off by default (a mirrored chest is not a real patient); "
            "turn on for bilateral organs such as the fundus, where a mirror image is the other eye"
        ),
    ] = False,
    min_crop: Annotated[float, typer.Option(help="Smallest crop, as a share of the image area")] = 0.5,
    heldout_fraction: Annotated[
        float, typer.Option(help="Share of patients held out for the label-free criterion")
    ] = 0.15,
    keep: Annotated[str, typer.Option(help="best (by the held-out criterion) or last epoch")] = "best",
    seed: Annotated[int, typer.Option(help="Seed of the split, the views and the batches")] = 0,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the checkpoint and its card go [default: DATA_DIR/encoders]")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the card here")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars (rate and ETA)")] = True,
) -> None:
    """Adapt the encoder to unlabeled images (SimCLR, NT-Xent), validate on held-out patients, save it.

    No label is read. Views keep the anatomy (crops of 50-100 % of the area, +-10 degrees) and the hue
    (window, gamma, blur and noise act equally on every channel). The kept epoch is the one whose pooled
    vectors best retrieve a held-out image's second view from its first; the checkpoint and its card are
    saved like a fine-tuned one, and `medcbir reindex --checkpoint FILE` serves it."""
    setup_logging()
    import json

    from indexer.cli.prediction import _manifest_spec
    from indexer.evaluation.adapt import AdaptConfig, AugmentConfig, load_unlabeled, run_adapt

    if data is not None and from_catalog:
        raise fail("pass either --data or --from-catalog, not both")
    settings = settings_from(data_dir, encoder, checkpoint)
    catalog_url = settings.resolved_database_url if data is None else None
    try:
        config = AdaptConfig(
            input_size=image_size,
            trainable_stages=trainable_stages,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            temperature=temperature,
            heldout_fraction=heldout_fraction,
            keep=keep,
            seed=seed,
            augment=AugmentConfig(crop_scale=(min_crop, 1.0), flip=flip),
        )
        spec = _manifest_spec(
            path_column, label_column, patient_column, split_column, hash_column, include, ignore_label
        )
        dataset = load_unlabeled(
            data,
            catalog_url=catalog_url,
            split=split,
            manifest=manifest,
            spec=spec,
            dedupe=dedupe,
            split_seed=split_seed,
        )
        report = run_adapt(
            dataset,
            config,
            encoder_name=settings.encoder,
            checkpoint=settings.checkpoint,
            device=settings.device,
            max_images=max_images,
            output_dir=output_dir or settings.data_dir / "encoders",
            data_label=_data_label(data, split, settings.data_dir, manifest),
            progress=progress,
        )
    except (IndexerError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    card = report.card
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({**card, "checkpoint_path": str(report.checkpoint)}, indent=2) + "\n")
    typer.echo(
        f"adapted on {card['train_images']} images, criterion on {card['heldout_images']} held-out images "
        f"({card['split_groups']['shared_train_heldout']} patients/contents shared); held-out instance "
        f"recall@1 {card['criterion_before']:.4f} before -> {card['criterion_kept']:.4f} "
        f"(epoch {card['best_epoch']} kept, {card['kept']})"
    )
    if card["best_epoch"] == 0:
        typer.echo("no epoch beat the starting weights on the held-out criterion: the checkpoint equals them")
    typer.echo(f"checkpoint: {report.checkpoint}")
    typer.echo(
        f"measure it: medcbir eval --data LABELED --checkpoint {report.checkpoint} --image-size {image_size}"
    )
    typer.echo(f"use it: medcbir reindex --encoder {settings.encoder} --checkpoint {report.checkpoint}")
