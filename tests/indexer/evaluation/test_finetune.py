"""Fine-tuning: the losses, and `medcbir finetune` on a tiny dataset whose checkpoint loads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embeddings import create_encoder
from embeddings.training import with_input_size
from embeddings.training.finetune import FinetuneConfig, proxy_nca_loss, supcon_loss
from embeddings.types import EmbeddingsError
from indexer.cli import app
from tests.indexer.evaluation.conftest import make_npz


def test_supcon_prefers_clustered_embeddings() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supcon_loss(clustered, labels, 0.1) < supcon_loss(mixed, labels, 0.1)
    # No anchor has a positive: zero loss, still differentiable.
    lonely = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(lonely, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0


def test_proxy_nca_is_low_when_embeddings_sit_on_their_proxies() -> None:
    proxies = torch.eye(2)
    labels = torch.tensor([0, 1])
    assert proxy_nca_loss(torch.eye(2), labels, proxies, 0.1) < proxy_nca_loss(
        torch.eye(2).flip(0), labels, proxies, 0.1
    )


def test_config_rejects_unknown_loss() -> None:
    with pytest.raises(EmbeddingsError, match="proxy_nca"):
        FinetuneConfig(loss="triplet")


def test_finetune_cli_loss_decreases_and_checkpoint_loads(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "toy.npz", per_split={"train": 16, "val": 6, "test": 6}, grey=False)
    card_path = tmp_path / "card.json"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--data",
            str(npz),
            "--epochs",
            "3",
            "--image-size",
            "48",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--output-dir",
            str(tmp_path / "encoders"),
            "--json",
            str(card_path),
        ],
    )
    assert result.exit_code == 0, result.output
    card = json.loads(card_path.read_text())
    losses = [row["loss"] for row in card["history"][1:]]
    assert losses[-1] < losses[0], losses
    assert card["loss"] == "proxy_nca" and card["test_images"] == 6 and card["val_images"] == 6
    checkpoint = Path(card["checkpoint_path"])
    assert checkpoint.parent == tmp_path / "encoders"
    saved_card = json.loads(checkpoint.with_suffix(".json").read_text())
    assert saved_card["base_encoder"] == "efficientnet_lite0" and saved_card["checkpoint"] == checkpoint.name
    # The saved file is a plain timm feature model: the registry loads it and names it by its hash.
    encoder = create_encoder("efficientnet_lite0", checkpoint=checkpoint, device="cpu")
    assert encoder.name == f"efficientnet_lite0@{checkpoint.stem}"
    assert checkpoint.stem.endswith(saved_card["sha256_prefix"])
    images = [np.random.default_rng(i).random((28, 28, 3), dtype=np.float32) for i in range(2)]
    tuned = with_input_size(encoder, 48).embed(images)
    assert tuned.shape == (2, 1280) and np.allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-5)
