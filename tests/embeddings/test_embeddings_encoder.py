"""The Encoder: unit float32 vectors, determinism, batching, preprocessing and input validation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from embeddings import EmbeddingsError, Encoder, ImageEncoder, create_encoder
from embeddings.encoder import choose_device
from embeddings.preprocessing import Preprocessing

Images = dict[str, npt.NDArray[np.float32]]


def _halve(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:height, :width].reshape(height // 2, 2, width // 2, 2, 3)
    return np.ascontiguousarray(blocks.mean(axis=(1, 3)), dtype=np.float32)


def test_default_encoder_identity(lite0: Encoder) -> None:
    assert isinstance(lite0, ImageEncoder)
    assert lite0.name == "efficientnet_lite0@efficientnet-lite0-57934424"
    assert lite0.model_name == "tf_efficientnet_lite0"
    assert lite0.dim == 1280
    assert lite0.device == torch.device("cpu")
    assert lite0.amp_dtype is None


def test_vectors_are_unit_norm_float32(lite0: Encoder, images: Images) -> None:
    vectors = lite0.embed(list(images.values()))
    assert vectors.shape == (len(images), 1280)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embedding_is_deterministic(lite0: Encoder, images: Images) -> None:
    first = lite0.embed([images["chelsea"], images["camera"]])
    second = lite0.embed([images["chelsea"], images["camera"]])
    np.testing.assert_array_equal(first, second)


def test_batched_equals_one_by_one(lite0: Encoder, images: Images) -> None:
    batch = lite0.embed(list(images.values()))
    singles = np.stack([lite0.embed_one(image) for image in images.values()])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    small_batches = create_encoder(device="cpu", batch_size=2).embed(list(images.values()))
    np.testing.assert_allclose(batch, small_batches, atol=1e-5)


def test_same_image_at_two_sizes_is_close_unrelated_images_are_not(lite0: Encoder, images: Images) -> None:
    full, half, astronaut, coffee = lite0.embed(
        [images["chelsea"], _halve(images["chelsea"]), images["astronaut"], images["coffee"]]
    )
    assert float(full @ half) > 0.95
    assert float(full @ astronaut) < 0.5
    assert float(full @ coffee) < 0.5
    assert float(astronaut @ coffee) < 0.5


def test_empty_input_gives_empty_matrix(lite0: Encoder) -> None:
    vectors = lite0.embed([])
    assert vectors.shape == (0, 1280)
    assert vectors.dtype == np.float32


def test_tiny_and_extreme_aspect_images_work(lite0: Encoder) -> None:
    rng = np.random.default_rng(0)
    odd = [rng.random((1, 1, 3), dtype=np.float32), rng.random((7, 900, 3), dtype=np.float32)]
    vectors = lite0.embed(odd)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_preprocessing_follows_the_model_data_config(lite0: Encoder) -> None:
    prep = lite0.preprocessing
    assert lite0.input_size == (224, 224)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.5, 0.5, 0.5)
    assert prep.interpolation == "bicubic"
    assert prep.crop_pct == 0.875 and prep.scale_size == (256, 256)
    assert prep.resize_shape(480, 640) == (256, 341)  # shorter side to 224 / 0.875
    out = prep(torch.full((3, 300, 500), 0.75))
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, torch.full((3, 224, 224), 0.5))  # (0.75 - 0.5) / 0.5


def test_preprocessing_for_imagenet_normalised_model() -> None:
    prep = Preprocessing.from_data_config(
        {
            "input_size": (3, 240, 240),
            "interpolation": "bilinear",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
    )
    out = prep(torch.zeros(3, 100, 120))
    assert out.shape == (3, 240, 240)
    torch.testing.assert_close(
        out[:, 0, 0], -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((32, 32), dtype=np.float32), r"shape \(32, 32\)"),
        (np.zeros((32, 32, 4), dtype=np.float32), r"shape \(32, 32, 4\)"),
        (np.zeros((3, 32, 32), dtype=np.float32), r"shape \(3, 32, 32\)"),
        (np.zeros((0, 32, 3), dtype=np.float32), "empty"),
        (np.zeros((32, 32, 3), dtype=np.uint8), r"uint8.*astype\(np.float32\) / 255"),
        (np.full((32, 32, 3), 255.0, dtype=np.float32), r"values in \[255, 255\]"),
        (np.full((32, 32, 3), np.nan, dtype=np.float32), "NaN"),
        ([[0.0, 0.0, 0.0]], "not a numpy array"),
    ],
)
def test_bad_inputs_say_what_to_pass(lite0: Encoder, bad: object, message: str) -> None:
    with pytest.raises(EmbeddingsError, match=message) as excinfo:
        lite0.embed([np.zeros((8, 8, 3), dtype=np.float32), bad])  # type: ignore[list-item]
    assert "image 1" in str(excinfo.value)
    assert "float32 arrays of shape (H, W, 3)" in str(excinfo.value)


def test_float64_and_rounding_noise_are_accepted(lite0: Encoder, images: Images) -> None:
    cat = images["chelsea"]
    reference = lite0.embed_one(cat)
    noisy = cat.astype(np.float64)
    noisy[0, 0] = 1.0000001
    np.testing.assert_allclose(lite0.embed_one(noisy), reference, atol=1e-5)  # type: ignore[arg-type]


def test_device_choice_without_cuda_and_bad_devices() -> None:
    if not torch.cuda.is_available():
        assert choose_device(None) == torch.device("cpu")
        with pytest.raises(EmbeddingsError, match="CUDA is not available"):
            choose_device("cuda")
    with pytest.raises(EmbeddingsError, match="unknown device"):
        choose_device("tpu-please")
    with pytest.raises(EmbeddingsError, match="batch_size"):
        create_encoder(pretrained=False, batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_matches_cpu_float32(lite0: Encoder, images: Images) -> None:
    gpu = create_encoder("efficientnet_lite0")
    assert gpu.device.type == "cuda"
    assert gpu.amp_dtype in (torch.bfloat16, torch.float16)
    batch = list(images.values())
    on_gpu = gpu.embed(batch)
    assert on_gpu.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(on_gpu, axis=1), 1.0, atol=1e-4)
    cosines = np.sum(on_gpu * lite0.embed(batch), axis=1)
    assert float(cosines.min()) > 0.99
