"""Model checkpoint directories, the one format every vqaudio model (VQ-VAE, prior) uses.

A checkpoint is a directory of three files, each written atomically:

- ``config.json``: ``{"format_version", "model_type", "vqaudio_version", "config", "metadata"}``,
  where ``config`` is the model's frozen config dataclass as a dict (so a checkpoint loads with
  no other information) and ``metadata`` is optional model-specific JSON;
- ``model.safetensors``: the weights and buffers;
- ``speakers.json``: the speaker table, a list of names in id order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vqaudio._files import atomic_path, atomic_write_json
from vqaudio.config import CHECKPOINT_FORMAT_VERSION, config_from_dict, config_to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SPEAKERS_NAME = "speakers.json"

class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, malformed or of another kind; the
    message names the directory or file."""


class UnknownSpeakerError(KeyError):
    """A speaker name that is not in a model's speaker table; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, list(known)
        super().__init__(name)

    def __str__(self) -> str:  # KeyError's str() would quote the whole message
        return f"unknown speaker {self.name!r}; known speakers: {', '.join(self.known)}"


def speaker_index(speakers: list[str], name: str) -> int:
    """Id of speaker ``name`` in a speaker table.

    Raises:
        UnknownSpeakerError: ``name`` is not in ``speakers`` (the message lists them).
    """
    try:
        return speakers.index(name)
    except ValueError:
        raise UnknownSpeakerError(name, speakers) from None


@dataclass(frozen=True)
class ModelFiles:
    """What :func:`read_model_files` read: ``config`` (the model's config dataclass),
    ``speakers`` (names in id order), ``state`` (name -> tensor, on the requested device) and
    ``meta`` (the whole ``config.json``)."""

    config: Any
    speakers: list[str]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]


def write_model_files(
    path: str | os.PathLike,
    model_type: str,
    config: Any,
    state: dict[str, torch.Tensor],
    speakers: list[str],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (created if needed); returns it.

    Each file goes to a temporary name and is renamed, ``config.json`` last, so an interrupted
    save never leaves a truncated file.

    Args:
        path: the checkpoint directory.
        model_type: ``"vqvae"`` or ``"prior"``, checked by :func:`read_model_files`.
        config: the model's frozen config dataclass.
        state: the model's ``state_dict()`` (tensors are copied to the CPU).
        speakers: speaker names in id order.
        metadata: optional JSON-serializable model-specific information.

    Raises:
        OSError: the directory or a file cannot be written.
        TypeError: ``metadata`` is not JSON-serializable.
    """
    from vqaudio import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_type": model_type,
        "vqaudio_version": __version__,
        "config": config_to_dict(config),
    }
    if metadata is not None:
        meta["metadata"] = metadata
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(weights_bytes(state))
    atomic_write_json(path / SPEAKERS_NAME, list(speakers))
    atomic_write_json(path / CONFIG_NAME, meta)
    return path


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The bytes of ``model.safetensors`` for a state dict (tensors copied to the CPU), exactly
    as :func:`write_model_files` writes them."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata={"format": "pt"})


def weights_id(state: dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of the SHA-256 of :func:`weights_bytes`: the same as of the
    ``model.safetensors`` file the state is saved to, so a model in memory and the same
    weights loaded from disk have one id."""
    import hashlib

    return hashlib.sha256(weights_bytes(state)).hexdigest()[:16]


def read_model_files(
    path: str | os.PathLike, model_type: str, config_class: type, map_location: str | torch.device = "cpu"
) -> ModelFiles:
    """Read and check a checkpoint directory of kind ``model_type``; its ``config`` is parsed
    into ``config_class`` and the weights are loaded onto ``map_location``.

    Raises:
        CheckpointError: the directory or one of its files is missing or malformed, the
            checkpoint is of another model type, or of a newer format version.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    for name in (CONFIG_NAME, WEIGHTS_NAME, SPEAKERS_NAME):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint, {name} is missing")
    config_path = path / CONFIG_NAME
    meta = _read_json(config_path)
    kind = meta.get("model_type") if isinstance(meta, dict) else None
    if kind != model_type:
        raise CheckpointError(f"{config_path}: model_type is {kind!r}, expected {model_type!r}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: checkpoint format {version!r} is not one this vqaudio reads "
            f"(<= {CHECKPOINT_FORMAT_VERSION}); upgrade vqaudio"
        )
    try:
        config = config_from_dict(config_class, meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: bad {model_type} config ({exc})") from None
    speakers = _read_json(path / SPEAKERS_NAME)
    if not isinstance(speakers, list) or not all(isinstance(s, str) for s in speakers):
        raise CheckpointError(f"{path / SPEAKERS_NAME}: expected a JSON list of speaker names")
    try:
        state = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:  # truncated, empty, not safetensors
        raise CheckpointError(f"{path / WEIGHTS_NAME}: cannot read the weights ({exc})") from None
    return ModelFiles(config=config, speakers=speakers, state=state, meta=meta)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
