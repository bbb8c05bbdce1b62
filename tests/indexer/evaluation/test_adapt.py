"""`medcbir adapt`: views keep greyscale and laterality, the split holds patients out, a real run changes the encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from embeddings import create_encoder
from imaging import load_image
from indexer.cli import app
from indexer.evaluation.adapt import (
    AdaptConfig,
    AdaptError,
    AugmentConfig,
    heldout_split,
    load_image_folder,
    load_unlabeled,
    nt_xent_loss,
)
from indexer.evaluation.augment import augment_views
from indexer.evaluation.datasets import LabeledDataset
from tests.indexer.evaluation.conftest import make_npz

DICOMS = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")
PICTURES = ("camera", "moon", "coins", "page", "clock", "horse", "cell", "retina", "immunohistochemistry")


def _real_images(folder: Path) -> Path:
    """Real pixels: pydicom's bundled CT / MR files and scikit-image's photographs (grey and colour)."""
    folder.mkdir(parents=True)
    for name in DICOMS:
        path = get_testdata_file(name)
        assert path is not None, name
        shutil.copyfile(path, folder / name)
    (folder / "photos").mkdir()
    for name in PICTURES:
        PILImage.fromarray(getattr(skimage.data, name)()).save(folder / "photos" / f"{name}.png")
    return folder


def _batch(image: np.ndarray, copies: int, size: int = 64) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    tensor = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return tensor.clamp(0, 1).repeat(copies, 1, 1, 1)


def test_views_keep_a_greyscale_image_grey_and_in_range() -> None:
    ct = load_image(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()).pixels
    assert np.array_equal(ct[..., 0], ct[..., 1])  # a grey image, as the decoder gives it
    views = augment_views(_batch(ct, 16), AugmentConfig(), torch.Generator().manual_seed(0))
    assert views.shape == (16, 3, 64, 64)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    # no colour or hue jitter: every channel changed exactly alike
    assert torch.equal(views[:, 0], views[:, 1]) and torch.equal(views[:, 1], views[:, 2])
    # and the views differ from each other (the augmentation did something)
    assert float((views[0] - views[1]).abs().mean()) > 0.01


def test_views_keep_a_colour_images_channel_order() -> None:
    fundus = skimage.data.retina().astype(np.float32) / 255  # red-dominant fundus photograph
    views = augment_views(_batch(fundus, 16), AugmentConfig(), torch.Generator().manual_seed(1))
    means = views.mean(dim=(2, 3))
    assert bool((means[:, 0] > means[:, 1]).all()) and bool((means[:, 1] > means[:, 2]).all())


def test_flips_only_when_asked() -> None:
    half = np.zeros((64, 64, 3), np.float32)
    half[:, :32] = 0.9  # bright left side: laterality
    batch = _batch(half, 64)

    def right_brighter(config: AugmentConfig) -> int:
        views = augment_views(batch, config, torch.Generator().manual_seed(2))
        left, right = views[..., :32].mean(dim=(1, 2, 3)), views[..., 32:].mean(dim=(1, 2, 3))
        return int((right > left).sum())

    assert right_brighter(AugmentConfig()) == 0
    assert 10 < right_brighter(AugmentConfig(flip=True)) < 54


def test_views_are_reproducible_with_the_same_generator() -> None:
    batch = _batch(skimage.data.camera()[..., None].repeat(3, axis=2).astype(np.float32) / 255, 4)
    first = augment_views(batch, AugmentConfig(), torch.Generator().manual_seed(5))
    again = augment_views(batch, AugmentConfig(), torch.Generator().manual_seed(5))
    assert torch.equal(first, again)


def test_nt_xent_prefers_matching_views() -> None:
    a = torch.eye(4)
    assert nt_xent_loss(a, a + 0.01, 0.2) < nt_xent_loss(a, a.flip(0), 0.2)


def _unlabeled(patients: list[str] | None, keys: list[str]) -> LabeledDataset:
    return LabeledDataset(
        name="toy",
        labels=np.zeros(len(keys), np.int64),
        class_names=["unlabeled"],
        content_keys=keys,
        uris=[str(i) for i in range(len(keys))],
        patients=patients,
    )


def test_the_heldout_split_never_puts_a_patient_on_both_sides() -> None:
    patients = [f"P{i // 3}" for i in range(60)]  # 20 patients, 3 images each
    dataset = _unlabeled(patients, [f"k{i}" for i in range(60)])
    for seed in range(5):
        train, heldout, how = heldout_split(dataset, seed=seed, fraction=0.2, max_heldout=500)
        assert {patients[i] for i in train}.isdisjoint({patients[i] for i in heldout})
        assert len(train) + len(heldout) == 60 and len(heldout) >= 12
        assert how.startswith("patient-grouped")
    # capped: fewer held-out images, still none of a training patient
    train, heldout, _ = heldout_split(dataset, seed=0, fraction=0.4, max_heldout=5)
    assert len(heldout) == 5 and {patients[i] for i in train}.isdisjoint({patients[i] for i in heldout})


def test_without_patient_ids_identical_contents_stay_together() -> None:
    keys = [f"k{i % 10}" for i in range(40)]  # every content four times
    train, heldout, how = heldout_split(_unlabeled(None, keys), seed=0, fraction=0.2, max_heldout=500)
    assert {keys[i] for i in train}.isdisjoint({keys[i] for i in heldout})
    assert how.startswith("content-hash")


def test_too_few_patients_is_refused_clearly() -> None:
    with pytest.raises(AdaptError, match="at least 2 patients"):
        heldout_split(
            _unlabeled(["P1"] * 10, [f"k{i}" for i in range(10)]), seed=0, fraction=0.2, max_heldout=9
        )


def test_bad_settings_say_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(AdaptError, match="--keep"):
        AdaptConfig(keep="middle")
    with pytest.raises(AdaptError, match="--image-size"):
        AdaptConfig(input_size=8)
    with pytest.raises(AdaptError, match="crop scale"):
        AugmentConfig(crop_scale=(0.01, 1.0))
    npz = make_npz(tmp_path / "toy.npz", per_split={"train": 8, "test": 4})
    with pytest.raises(AdaptError, match="--split takes"):
        load_unlabeled(npz, split="val")
    assert len(load_unlabeled(npz)) == 8  # the train split by default
    with pytest.raises(AdaptError, match="no image files"):
        load_image_folder(tmp_path)
    result = CliRunner().invoke(app, ["adapt", "--data", str(npz), "--keep", "middle", "--no-progress"])
    assert result.exit_code == 2 and "choose 'best'" in result.output


def test_a_tiny_real_run_saves_a_checkpoint_that_changes_the_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "torch")  # the weights are under test, not the backend
    folder = _real_images(tmp_path / "images")
    out = tmp_path / "encoders"
    card_path = tmp_path / "card.json"
    result = CliRunner().invoke(
        app,
        [
            "adapt", "--data", str(folder), "--epochs", "1", "--image-size", "64", "--batch-size", "4",
            "--heldout-fraction", "0.25", "--keep", "last", "--lr", "1e-3", "--output-dir", str(out),
            "--json", str(card_path), "--data-dir", str(tmp_path / "data"), "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads(card_path.read_text())
    checkpoint = Path(card["checkpoint_path"])
    assert checkpoint.is_file() and checkpoint.parent == out and "-adapt-images-" in checkpoint.name
    assert json.loads(checkpoint.with_suffix(".json").read_text())["sha256_prefix"] in checkpoint.name
    assert card["labels_used"] is False and card["best_epoch"] == 1
    assert card["train_images"] + card["heldout_images"] == len(DICOMS) + len(PICTURES)
    assert card["split_groups"]["shared_train_heldout"] == 0
    assert "instance recall@1" in card["criterion"]
    assert [row["epoch"] for row in card["history"]] == [0.0, 1.0]
    for row in card["history"]:
        assert 0.0 <= row["instance_recall@1"] <= 1.0 and row["heldout_nt_xent"] > 0
    assert card["augmentations"]["flip"] is False and card["seed"] == 0
    assert f"--checkpoint {checkpoint}" in result.output  # how to serve it: reindex

    image = load_image((folder / "CT_small.dcm").read_bytes()).pixels
    before = create_encoder("efficientnet_lite0").embed_one(image)
    adapted = create_encoder("efficientnet_lite0", checkpoint=checkpoint)
    after = adapted.embed_one(image)
    assert adapted.name != create_encoder("efficientnet_lite0").name  # a new weight identity
    assert after.shape == before.shape and abs(float(np.linalg.norm(after)) - 1) < 1e-5
    assert float(after @ before) < 0.99999  # the vectors moved


def test_a_manifest_dataset_adapts_on_evals_database_only(manifest_dataset: tuple[Path, Path]) -> None:
    from indexer.evaluation.datasets import ManifestSpec
    from indexer.evaluation.protocol import make_split
    from indexer.evaluation.runner import EvaluationConfig, prepare_dataset

    images, manifest = manifest_dataset
    spec = ManifestSpec(
        path_column="filename",
        label_column="finding",
        patient_column="patientid",
        include=(("modality", "X-ray"),),
        ignore_labels=("todo",),
    )
    for seed in range(4):
        evaluated = prepare_dataset(EvaluationConfig(data=images, manifest=manifest, spec=spec, seed=seed))
        split = make_split(evaluated, seed=seed)
        queries = {evaluated.uris[i] for i in split.test}
        query_patients = {evaluated.patients[i] for i in split.test} if evaluated.patients else set()
        assert queries and query_patients
        part = load_unlabeled(images, manifest=manifest, spec=spec, split_seed=seed)
        # exactly eval's database (split.train), none of its queries nor their patients, labels gone
        assert part.uris == [evaluated.uris[i] for i in split.train]
        assert queries.isdisjoint(part.uris) and query_patients.isdisjoint(part.patients or [])
        assert set(part.labels.tolist()) == {0} and part.class_names == ["unlabeled"]
        assert "ct.png" not in part.uris and "todo.png" not in part.uris  # eval's filters hold
        assert part.provenance["eval_queries"] == len(split.test) and part.provenance["part"] == "train"
        assert part.provenance["eval_split"] == split.how
        assert part.name == evaluated.name
        assert sorted(queries) == sorted(
            load_unlabeled(images, manifest=manifest, spec=spec, split="test", split_seed=seed).uris
        )
    with pytest.raises(AdaptError, match="--split 'queries'"):
        load_unlabeled(images, manifest=manifest, spec=spec, split="queries")


def test_a_manifest_split_column_keeps_the_test_rows_and_their_duplicates_out(tmp_path: Path) -> None:
    from indexer.evaluation.datasets import ManifestSpec
    from tests.indexer.evaluation.conftest import write_png

    root = tmp_path / "mri"
    rows = [(f"tr{i}.png", "Training", "a" if i % 2 else "b") for i in range(6)]
    rows += [(f"te{i}.png", "Testing", "a") for i in range(3)]
    for i, (name, _, _) in enumerate(rows):
        write_png(root / name, 30 + 20 * i, seed=i)
    (root / "te0.png").write_bytes((root / "tr0.png").read_bytes())  # a test copy of a train image
    (root / "labels.csv").write_text("path,split,label\n" + "".join(f"{n},{s},{c}\n" for n, s, c in rows))
    spec = ManifestSpec(split_column="split")
    part = load_unlabeled(root, manifest=root / "labels.csv", spec=spec, dedupe=True)
    assert part.uris == [f"tr{i}.png" for i in range(6)]
    assert len(load_unlabeled(root, manifest=root / "labels.csv", spec=spec, split="all", dedupe=True)) == 8
    npz = make_npz(tmp_path / "toy.npz", per_split={"train": 8, "test": 4})
    with pytest.raises(AdaptError, match=r"not with an \.npz"):
        load_unlabeled(npz, manifest=root / "labels.csv", spec=spec)
    result = CliRunner().invoke(
        app, ["adapt", "--data", str(npz), "--manifest", str(root / "labels.csv"), "--no-progress"]
    )
    assert result.exit_code != 0 and "not with an .npz" in result.output
    result = CliRunner().invoke(
        app,
        ["adapt", "--data", str(root), "--manifest", str(root / "labels.csv"), "--split-column", "split",
         "--split", "everything", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code != 0 and "--split 'everything'" in result.output
