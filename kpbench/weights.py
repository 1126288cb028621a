"""Backbone weights: ``none``, ``imagenet`` (timm's hub, failing at once when offline) or a local
``.pth`` / ``.safetensors`` file, always loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kpbench.errors import KpbenchError


def read_checkpoint(path: str | Path):
    """Any file kpbench or torch wrote, loaded safely (``weights_only=True``: no pickled code runs)."""
    p = Path(path)
    if not p.is_file():
        raise KpbenchError(f"weights file not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unsafe file
        raise KpbenchError(f"{p}: cannot be loaded safely (weights_only=True): {type(exc).__name__}: {exc}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (.pth/.pt or .safetensors), loaded safely."""
    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        from safetensors.torch import load_file

        return load_file(str(p))
    obj = read_checkpoint(p)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise KpbenchError(f"{p}: expected a state dict, found {type(obj).__name__}")
    return obj


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` by name; if the names differ but every tensor lines up in order
    and shape (a checkpoint from another implementation of the same net), load by position."""
    own = module.state_dict()
    theirs = dict(state)
    if set(own) != set(theirs) and len(own) == len(theirs) and all(
        a.shape == b.shape for a, b in zip(own.values(), theirs.values())
    ):
        theirs = dict(zip(own, theirs.values()))
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    if missing or unexpected:
        raise KpbenchError(
            f"{source}: keys do not match the backbone: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}"
        )
    bad = [k for k in own if own[k].shape != theirs[k].shape]
    if bad:
        raise KpbenchError(f"{source}: shape mismatch for {bad[:5]}")
    module.load_state_dict(theirs, strict=False)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")


def create_backbone(name: str, weights: str = "none", **kwargs) -> torch.nn.Module:
    """A timm model without its classifier, with weights from ``weights``."""
    import timm  # here, not above: seconds of imports a run of an exported graph does without

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise KpbenchError(f"timm cannot create {name!r}: {exc}") from None
    if weights == "imagenet":
        weights = _cached_imagenet_file(model, name)
    if weights != "none":
        state = read_state_dict(weights)
        try:  # a whole classifier checkpoint ...
            load_into(model, state, str(weights))
            model.reset_classifier(0)
        except KpbenchError:  # ... or just the backbone
            model.reset_classifier(0)
            load_into(model, state, str(weights))
    else:
        model.reset_classifier(0)
    return model


def _cached_imagenet_file(model: torch.nn.Module, name: str) -> str:
    """The hub file from the local cache; never waits on an unreachable hub."""
    hub_id = (model.pretrained_cfg or {}).get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, filename)
            if isinstance(hit, str):
                return hit
    if not _offline():
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(hub_id, "model.safetensors", etag_timeout=5)
        except Exception as exc:  # noqa: BLE001
            reason = type(exc).__name__
    else:
        reason = "the hub is offline (HF_HUB_OFFLINE=1)"
    raise KpbenchError(
        f"ImageNet weights for {name!r} ({hub_id}/model.safetensors) are not in the local cache and {reason}; "
        f"download them elsewhere and pass weights: /path/to/{name}.safetensors"
    )
