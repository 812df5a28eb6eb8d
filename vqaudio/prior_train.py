"""Training a prior on the output of ``vqaudio tokenize`` (with Accelerate).

A user tokenizes a corpus once with a trained VQ-VAE, then fits the prior to the tokens like
any language model (van den Oord et al. 2017, Sec. 3.2: the prior over the latents is trained
after the VQ-VAE, on its codes)::

    vqaudio tokenize CORPUS --checkpoint CKPT --out TOKENS_DIR
    vqaudio train-prior TOKENS_DIR --out PRIOR_DIR                    # autoregressive
    vqaudio train-prior TOKENS_DIR --out PRIOR_DIR --type diffusion   # VQ-Diffusion

Both priors (:class:`~vqaudio.nn.prior.PriorTransformer`,
:class:`~vqaudio.nn.diffusion_prior.DiffusionPrior`) go through the same loop, data, flags,
checkpoints, resume and metrics; they differ in their loss and their validation figure.

Data:
    every training item is a random window of at most ``window`` codes of one utterance with
    the utterance's speaker id (:class:`CodeWindowDataset`). Validation uses whole held-out
    utterances, chosen per speaker by a hash of their path (:func:`split_entries`), so the
    split does not depend on the seed, the order of the files or the number of processes.

Metric:
    validation cross-entropy in bits per code, next to the unigram entropy of the validation
    codes (the best any context-free model could do on them; also given per speaker). The gap
    is how much of the code stream the prior predicts from context. For the diffusion prior
    the figure is its variational bound (all T terms, one draw each, a fixed seed): an upper
    bound on its cross-entropy, read against the autoregressive prior's exact figure.

Output folder ``PRIOR_DIR``:
    ``config.json``, ``model.safetensors``, ``speakers.json`` (the prior, loadable with
    :meth:`PriorTransformer.from_pretrained`), ``train_config.json``, ``metrics.json`` (the
    summary), and, written by the same code as a VQ-VAE run's (:mod:`vqaudio.runs`):
    ``metrics.jsonl`` (every ``log_every`` steps ``train/loss`` in nats per code,
    ``train/bits_per_code``, ``train/lr``, ``train/codes_per_second``, ``wall_seconds``; at each
    validation ``valid/bits_per_code``), ``sessions.jsonl`` (one line per call: steps, why it
    stopped, device, threads, command) and ``checkpoints/step_XXXXXXXX/``
    (``accelerator.save_state`` plus ``trainer_state.json``) for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vqaudio._files import atomic_write_json
from vqaudio._system import MIXED_PRECISION, resolve_mixed_precision
from vqaudio.checkpoint import CheckpointError
from vqaudio.config import config_from_dict, config_to_dict
from vqaudio.nn.diffusion_prior import DiffusionPrior, DiffusionPriorConfig
from vqaudio.nn.prior import IGNORE_INDEX, PriorConfig, PriorTransformer
from vqaudio.nn.quantizer import code_entropy
from vqaudio.runs import (
    CHECKPOINTS_DIR,
    LR_SCHEDULES,
    JSONLinesTracker,
    catch_stop_signals,
    flat_config,
    intact_checkpoint,
    learning_rate_factor,
    open_session,
    restore_signals,
    session_record,
    stop_reason,
    truncate_metrics,
    write_session,
)
from vqaudio.runs import METRICS_NAME as CURVE_NAME
from vqaudio.runs import save_checkpoint as save_training_state

TRAIN_CONFIG_NAME = "train_config.json"
#: The run's summary (best and last validation, baselines, history); the learning curve is
#: ``metrics.jsonl`` (:data:`CURVE_NAME`), as in a VQ-VAE run.
METRICS_NAME = "metrics.json"
TRAINER_STATE_NAME = "trainer_state.json"

#: ``--type`` of ``vqaudio train-prior`` -> (model class, config class).
PRIOR_TYPES: dict[str, tuple[type, type]] = {
    "autoregressive": (PriorTransformer, PriorConfig),
    "diffusion": (DiffusionPrior, DiffusionPriorConfig),
}


def prior_type_of(config: PriorConfig | DiffusionPriorConfig) -> str:
    """The ``--type`` name of a prior config: ``"autoregressive"`` or ``"diffusion"``."""
    return "diffusion" if isinstance(config, DiffusionPriorConfig) else "autoregressive"


@dataclass(frozen=True)
class PriorTrainConfig:
    """Settings of one prior training run (saved in ``train_config.json``).

    Attributes:
        max_steps: optimizer steps in total.
        batch_size: windows per step and process.
        window: codes per training window; ``None``: the 90th percentile of the training
            utterance lengths, at most the prior's ``max_len``.
        learning_rate: peak AdamW learning rate, reached after ``warmup_steps``.
        lr_schedule: after the warm-up, ``"cosine"`` decay to 10 % of ``learning_rate`` at
            ``max_steps`` or ``"constant"`` (:func:`vqaudio.runs.learning_rate_factor`).
        weight_decay: AdamW weight decay of the matrices (not of norms and embeddings).
        warmup_steps: linear warm-up steps.
        max_grad_norm: maximum global gradient norm (0 disables clipping).
        start_prob: probability that a window starts at the start of its utterance (otherwise
            its offset is uniform), so the prior also learns how utterances begin.
        val_fraction: fraction of each speaker's utterances held out for validation (at
            least one per speaker that has two or more).
        valid_every: steps between validations (and at the end).
        checkpoint_every: steps between checkpoints (and at the end).
        keep_last: most recent checkpoints kept on disk.
        log_every: steps between lines of ``metrics.jsonl`` (means over the steps since the
            previous line, as in :class:`vqaudio.train.TrainConfig`).
        eval_batch_size: windows per validation batch.
        seed: seed of the model's initialisation and of the training windows.
        num_workers: DataLoader worker processes.
        mixed_precision: ``"auto"`` (bf16 where the hardware runs it natively, else fp32),
            or Accelerate's ``"no"``, ``"fp16"`` or ``"bf16"``.
        cpu: train on the CPU even if a GPU is present.
        aux_loss_weight: diffusion prior only: weight of the auxiliary cross-entropy of the
            clean codes beside the variational bound (Gu et al. 2022, Eq. 12). The paper's 5e-4
            is for long runs: on fsdd-8k tokens, 3,000 steps of the 0.9 M-parameter CPU prior
            (batch 16 x 128 codes) reached a validation bound of 7.45 bits/code with 5e-4 and
            3.38 with 1.0 (the unigram entropy is 8.56), so 1.0 is the default.
    """

    max_steps: int = 20000
    batch_size: int = 16
    window: int | None = None
    learning_rate: float = 5e-4
    lr_schedule: str = "cosine"
    weight_decay: float = 0.1
    warmup_steps: int = 200
    max_grad_norm: float = 1.0
    start_prob: float = 0.25
    val_fraction: float = 0.05
    valid_every: int = 500
    checkpoint_every: int = 1000
    keep_last: int = 2
    log_every: int = 50
    eval_batch_size: int = 16
    seed: int = 0
    num_workers: int = 0
    mixed_precision: str = "auto"
    cpu: bool = False
    aux_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "valid_every", "checkpoint_every", "keep_last", "log_every",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be >= 2 codes, got {self.window}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.start_prob <= 1.0:
            raise ValueError(f"start_prob must be in [0, 1], got {self.start_prob}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {self.mixed_precision!r}")


#: Names that ``train_config.json`` of runs made before the trainers shared one vocabulary
#: used for :class:`PriorTrainConfig` fields (old -> new).
LEGACY_PRIOR_TRAIN_FIELDS = {"steps": "max_steps", "eval_every": "valid_every", "save_every": "checkpoint_every",
                             "keep_checkpoints": "keep_last", "grad_clip": "max_grad_norm"}


def prior_train_config_from_dict(data: dict[str, Any]) -> PriorTrainConfig:
    """A :class:`PriorTrainConfig` from a saved ``train_config.json`` section, also one that uses
    the field names of earlier versions (:data:`LEGACY_PRIOR_TRAIN_FIELDS`).

    Raises:
        ValueError: an unknown field, or a field given under both its old and its new name.
    """
    renamed = {LEGACY_PRIOR_TRAIN_FIELDS.get(k, k): v for k, v in data.items()}
    if len(renamed) != len(data):
        raise ValueError(f"PriorTrainConfig fields given twice (old and new names): {sorted(data)}")
    return config_from_dict(PriorTrainConfig, renamed)


@dataclass(frozen=True)
class CodeSequence:
    """One utterance's codes: ``codes`` [T'] int64 in [0, K), ``speaker`` id, source ``path``."""

    path: str
    speaker: int
    codes: np.ndarray


# --------------------------------------------------------------------------- data


def split_entries(
    sequences: Sequence[CodeSequence], val_fraction: float
) -> tuple[list[CodeSequence], list[CodeSequence]]:
    """Deterministic per-speaker train/validation split of whole utterances.

    Each speaker's utterances are ordered by the SHA-1 of their path and the first
    ``round(val_fraction * n)`` (at least 1 when ``n >= 2`` and ``val_fraction > 0``) are held
    out. The split depends only on the paths, not on the file order, a seed or the number of
    processes.

    Returns:
        (train, validation), each in the input order.
    """
    by_speaker: dict[int, list[CodeSequence]] = {}
    for s in sequences:
        by_speaker.setdefault(s.speaker, []).append(s)
    held_out: set[str] = set()
    for group in by_speaker.values():
        n = len(group)
        k = round(val_fraction * n)
        if val_fraction > 0 and n >= 2:
            k = max(k, 1)
        k = min(k, n - 1)
        ranked = sorted(group, key=lambda s: hashlib.sha1(s.path.encode()).hexdigest())
        held_out.update(s.path for s in ranked[:k])
    train = [s for s in sequences if s.path not in held_out]
    val = [s for s in sequences if s.path in held_out]
    return train, val


def pad_codes(codes: np.ndarray, length: int) -> np.ndarray:
    """``codes`` [n] int64, n <= length -> [length] int64, padded with :data:`IGNORE_INDEX`."""
    out = np.full(length, IGNORE_INDEX, dtype=np.int64)
    out[: len(codes)] = codes
    return out


class CodeWindowDataset(Dataset):
    """Random windows of codes with their speaker: the prior's training items.

    Item ``i`` is ``{"codes": LongTensor [window] (codes in [0, K), padded at the end with
    IGNORE_INDEX when the utterance is shorter), "speaker": LongTensor []}``. It is a pure
    function of ``(seed, i)``: an utterance drawn with probability proportional to its length,
    then an offset, 0 with probability ``start_prob`` and otherwise uniform in
    ``0 .. T' - window``. So a resumed run that skips the first batches sees exactly the
    windows it would have seen, whatever ``num_workers``.

    Args:
        sequences: training utterances (non-empty, each with at least one code).
        window: codes per item.
        length: number of items (``max_steps * batch_size * num_processes``).
        seed: seed of the draws.
        start_prob: see above.

    Raises:
        ValueError: no sequences, or a sequence without codes.
    """

    def __init__(self, sequences: Sequence[CodeSequence], window: int, length: int, seed: int, start_prob: float):
        if not sequences:
            raise ValueError("no training utterances")
        for s in sequences:
            if len(s.codes) == 0:
                raise ValueError(f"{s.path}: holds no codes")
        self.sequences = list(sequences)
        self.window = window
        self.length = length
        self.seed = seed
        self.start_prob = start_prob
        lengths = np.array([len(s.codes) for s in self.sequences], dtype=np.float64)
        self._cumulative = np.cumsum(lengths / lengths.sum())

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        j = min(int(np.searchsorted(self._cumulative, rng.random(), side="right")), len(self.sequences) - 1)
        seq = self.sequences[j]
        span = len(seq.codes) - self.window
        offset = 0
        if span > 0 and rng.random() >= self.start_prob:
            offset = int(rng.integers(0, span + 1))
        codes = pad_codes(seq.codes[offset : offset + self.window], self.window)
        return {"codes": torch.from_numpy(codes), "speaker": torch.tensor(seq.speaker, dtype=torch.long)}


class ValidationChunks(Dataset):
    """Whole validation utterances cut into consecutive chunks of at most ``window`` codes.

    Every code of every utterance is scored exactly once; each chunk starts with the start
    token, as a training window does. Item: ``{"codes": [window] int64 (IGNORE_INDEX
    padded), "speaker": int64 []}``.
    """

    def __init__(self, sequences: Sequence[CodeSequence], window: int):
        self.items: list[tuple[np.ndarray, int]] = []
        for s in sequences:
            for lo in range(0, len(s.codes), window):
                self.items.append((pad_codes(s.codes[lo : lo + window], window), s.speaker))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        codes, speaker = self.items[index]
        return {"codes": torch.from_numpy(codes), "speaker": torch.tensor(speaker, dtype=torch.long)}


def entropy_bits(counts: np.ndarray) -> float:
    """Plug-in entropy in bits of the distribution with the given counts (zeros allowed;
    NaN when all are zero)."""
    return code_entropy(counts) / math.log(2)


def unigram_statistics(
    train: Sequence[CodeSequence], val: Sequence[CodeSequence], codebook_size: int
) -> dict[str, float]:
    """Context-free baselines for the prior's bits per code.

    Returns a dict (all in bits per code):
        ``unigram_entropy_bits``: entropy of the validation codes' own histogram, the best a
        model that ignores context and speaker could score on them;
        ``speaker_unigram_entropy_bits``: the same per speaker, averaged with code-count
        weights (the best with speaker but no context);
        ``train_unigram_cross_entropy_bits``: cross-entropy of the validation codes under the
        training codes' histogram (add-one smoothed), what a fitted unigram model scores;
        ``train_unigram_entropy_bits``: entropy of the training codes;
        ``uniform_bits``: log2(K), the VQ-VAE's uniform prior;
        ``codes_in_use``: distinct codes in the training split.
    """
    def histogram(seqs: Sequence[CodeSequence]) -> np.ndarray:
        if not seqs:
            return np.zeros(codebook_size, dtype=np.int64)
        return np.bincount(np.concatenate([s.codes for s in seqs]), minlength=codebook_size)

    train_counts = histogram(train)
    val_counts = histogram(val)
    stats = {
        "uniform_bits": math.log2(codebook_size),
        "train_unigram_entropy_bits": entropy_bits(train_counts),
        "codes_in_use": int((train_counts > 0).sum()),
    }
    if val_counts.sum() > 0:
        smoothed = (train_counts + 1.0) / (train_counts.sum() + codebook_size)
        stats["unigram_entropy_bits"] = entropy_bits(val_counts)
        stats["train_unigram_cross_entropy_bits"] = float(-(val_counts * np.log2(smoothed)).sum() / val_counts.sum())
        per_speaker = []
        for spk in sorted({s.speaker for s in val}):
            c = histogram([s for s in val if s.speaker == spk])
            per_speaker.append((c.sum(), entropy_bits(c)))
        total = sum(n for n, _ in per_speaker)
        stats["speaker_unigram_entropy_bits"] = float(sum(n * h for n, h in per_speaker) / total)
    return stats


def load_code_sequences(tokens_dir: str | os.PathLike) -> tuple[dict[str, Any], list[CodeSequence], list[str]]:
    """Read a tokens folder written by ``vqaudio tokenize`` as prior training data.

    Returns:
        (metadata, sequences, skipped): the tokens' metadata dict, one :class:`CodeSequence`
        per utterance whose speaker is in ``metadata["speakers"]`` (ids in that table's
        order; with a one-speaker table, utterances without a speaker get id 0), and the
        paths of the utterances skipped for lacking a known speaker.

    Raises:
        FileNotFoundError / ValueError: from :func:`vqaudio.tokens.read_tokens`, or no
            utterance is usable, or codes fall outside ``[0, codebook_size)``.
    """
    from vqaudio.tokens import read_tokens

    token_set = read_tokens(tokens_dir)
    meta = dict(token_set.metadata)
    speakers = list(meta.get("speakers") or [])
    k = int(meta["codebook_size"])
    if not speakers:
        raise ValueError(f"{tokens_dir}: the tokens' metadata has no speaker table")
    index = {name: i for i, name in enumerate(speakers)}
    sequences: list[CodeSequence] = []
    skipped: list[str] = []
    for entry in token_set.entries:
        speaker = entry.speaker
        if speaker is None and len(speakers) == 1:
            speaker = speakers[0]
        codes = np.asarray(entry.codes, dtype=np.int64).reshape(-1)
        if speaker not in index or codes.size == 0:
            skipped.append(str(entry.path))
            continue
        if codes.min() < 0 or codes.max() >= k:
            raise ValueError(f"{tokens_dir}: {entry.path} holds codes outside [0, {k})")
        sequences.append(CodeSequence(path=str(entry.path), speaker=index[speaker], codes=codes))
    if not sequences:
        raise ValueError(
            f"{tokens_dir}: no utterance with a known speaker and codes "
            f"({len(skipped)} skipped; speaker table: {', '.join(speakers)})"
        )
    return meta, sequences, skipped


# --------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate_bits_per_code(model: torch.nn.Module, loader: DataLoader, accelerator: Any) -> float:
    """Validation cross-entropy in bits per code: summed ``-log2 p`` over every scored code
    divided by their number (gathered across processes)."""
    model.eval()
    total_nll = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    total_codes = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        codes, speaker = batch["codes"], batch["speaker"]
        logits = model(codes, speaker)
        nll = F.cross_entropy(
            logits.float().transpose(1, 2), codes, ignore_index=IGNORE_INDEX, reduction="none"
        ).sum(dim=1)
        count = (codes != IGNORE_INDEX).sum(dim=1)
        nll, count = accelerator.gather_for_metrics((nll, count))
        total_nll += nll.double().sum()
        total_codes += count.double().sum()
    model.train()
    return float(total_nll / total_codes / math.log(2)) if total_codes > 0 else float("nan")


@torch.no_grad()
def evaluate_diffusion_bound(model: torch.nn.Module, loader: DataLoader, accelerator: Any, seed: int = 0) -> float:
    """The diffusion prior's variational bound on the validation codes, in bits per code: every
    term ``L_T, L_{T-1} .. L_0`` (:meth:`DiffusionPrior.bound_bits`), the noise drawn from a
    generator seeded with ``seed`` and the process index, so repeated validations compare."""
    core = accelerator.unwrap_model(model)
    core.eval()
    generator = torch.Generator(device=accelerator.device).manual_seed(seed * 1000 + accelerator.process_index)
    total_bits = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    total_codes = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        codes, speaker = batch["codes"], batch["speaker"]
        count = (codes != IGNORE_INDEX).sum(dim=1)
        with accelerator.autocast():
            bits = core.bound_bits(codes, speaker, generator) * count
        bits, count = accelerator.gather_for_metrics((bits, count))
        total_bits += bits.double().sum()
        total_codes += count.double().sum()
    core.train()
    return float(total_bits / total_codes) if total_codes > 0 else float("nan")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_prior(
    tokens_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    prior_config: PriorConfig | DiffusionPriorConfig | None = None,
    train_config: PriorTrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    max_minutes: float | None = None,
    log_with: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit a prior to a tokens folder, with Accelerate.

    Args:
        tokens_dir: output of ``vqaudio tokenize`` (see :func:`load_code_sequences`).
        out_dir: the prior's folder (layout in the module docstring).
        prior_config: which prior and its size: a :class:`PriorConfig` (the autoregressive
            :class:`PriorTransformer`, the default) or a :class:`DiffusionPriorConfig` (the
            :class:`DiffusionPrior`); ``codebook_size`` and ``num_speakers`` are taken from
            the tokens. Ignored on resume (the saved one is used).
        train_config: run settings; on resume the saved one is used, except ``max_steps``, which
            may be raised to train longer.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints`` (start from
            step 0 when there is none yet, so a recipe can always pass it).
        progress: show a progress bar.
        log_with: extra Accelerate trackers (``"tensorboard"``, ``"wandb"``...), logging into
            ``out_dir``; ``metrics.jsonl`` is always written.
        overwrite: delete a previous prior run in ``out_dir`` first (only a folder that holds
            a prior run, or an empty one, is ever deleted); not with ``resume``.
        max_minutes: stop after this many minutes of wall time in this call, at the end of a
            step, with a validation, a checkpoint and the exported prior; ``resume``
            continues the run. SIGTERM and Ctrl-C (SIGINT) stop the same way (a second one
            kills).

    Returns:
        the final metrics (also in ``out_dir/metrics.json``): ``step``,
        ``val_bits_per_code``, the baselines of :func:`unigram_statistics`, ``history``...,
        and ``stopped``: ``"max_steps"`` (finished), ``"max_minutes"`` or ``"signal"``.

    Raises:
        FileExistsError: ``out_dir`` already holds a prior run and neither ``resume`` nor
            ``overwrite`` is given, or ``overwrite`` on a folder that is not a prior run.
        ValueError: unusable tokens, or tokens from another VQ-VAE than the run being resumed.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if max_minutes is not None and not (max_minutes > 0 and math.isfinite(max_minutes)):
        raise ValueError(f"max_minutes must be a positive number, got {max_minutes}")
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    if overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / TRAIN_CONFIG_NAME).is_file() or "prior_config" not in json.loads(
                (out_dir / TRAIN_CONFIG_NAME).read_text()):
            raise FileExistsError(f"{out_dir}: is not a prior run; --overwrite deletes only those (nothing was changed)")
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(out_dir)
    train_config = train_config or PriorTrainConfig()
    prior_config = prior_config or PriorConfig()
    meta, sequences, skipped = load_code_sequences(tokens_dir)
    speakers = list(meta["speakers"])
    saved_path = out_dir / TRAIN_CONFIG_NAME
    checkpoint: Path | None = None
    if resume:
        checkpoint = intact_checkpoint(out_dir) if saved_path.is_file() else None
        if checkpoint is None:
            print(f"{out_dir}: no checkpoint to resume from yet; starting from step 0")
    if checkpoint is not None:
        saved = json.loads(saved_path.read_text())
        prior_config = config_from_dict(PRIOR_TYPES[saved.get("prior_type", "autoregressive")][1],
                                        saved["prior_config"])
        max_steps = train_config.max_steps
        train_config = prior_train_config_from_dict(saved["train_config"])
        if max_steps > train_config.max_steps:
            train_config = dataclasses.replace(train_config, max_steps=max_steps)
        if saved.get("tokens_checkpoint_id") != meta.get("checkpoint_id"):
            raise ValueError(
                f"{tokens_dir}: tokens of VQ-VAE {meta.get('checkpoint_id')!r}, but the run in {out_dir} "
                f"was trained on tokens of {saved.get('tokens_checkpoint_id')!r}"
            )
    else:
        if not resume and not overwrite and (saved_path.exists() or (out_dir / CHECKPOINTS_DIR).exists() or (out_dir / "model.safetensors").exists()):
            raise FileExistsError(
                f"{out_dir}: already holds a prior training run; pass --resume to continue it, --overwrite to "
                f"delete it and start again, or choose another --out"
            )
        prior_config = dataclasses.replace(
            prior_config, codebook_size=int(meta["codebook_size"]), num_speakers=len(speakers)
        )

    train_seqs, val_seqs = split_entries(sequences, train_config.val_fraction)
    window = train_config.window
    if window is None:
        window = int(np.percentile([len(s.codes) for s in train_seqs], 90))
    window = max(2, min(window, prior_config.max_len))
    stats = unigram_statistics(train_seqs, val_seqs, prior_config.codebook_size)

    device_type = "cuda" if torch.cuda.is_available() and not train_config.cpu else "cpu"
    mixed_precision = resolve_mixed_precision(train_config.mixed_precision, device_type)
    accelerator = Accelerator(cpu=train_config.cpu, mixed_precision=mixed_precision,
                              log_with=[JSONLinesTracker(out_dir / CURVE_NAME), *log_with], project_dir=str(out_dir))
    set_seed(train_config.seed)
    prior_metadata = {
        key: meta[key]
        for key in ("checkpoint_id", "sample_rate", "hop_length", "codes_per_second", "codebook_size")
        if key in meta
    }
    prior_metadata["window"] = window
    prior_type = prior_type_of(prior_config)
    model = PRIOR_TYPES[prior_type][0](prior_config, speakers, metadata=prior_metadata)
    optimizer = torch.optim.AdamW(
        _param_groups(model, train_config.weight_decay), lr=train_config.learning_rate, betas=(0.9, 0.95)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        learning_rate_factor, warmup_steps=train_config.warmup_steps, max_steps=train_config.max_steps,
        schedule=train_config.lr_schedule))
    train_data = CodeWindowDataset(
        train_seqs, window, train_config.max_steps * train_config.batch_size * accelerator.num_processes,
        train_config.seed, train_config.start_prob,
    )
    train_loader = DataLoader(train_data, batch_size=train_config.batch_size, shuffle=False,
                              num_workers=train_config.num_workers, drop_last=True)
    # The scheduler is not prepared: Accelerate's wrapper steps it once per process at every
    # call, which would end warm-up and decay num_processes times too early. It is stepped
    # once per optimizer step here and saved with the checkpoints.
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)
    val_loader = None
    if val_seqs:
        val_loader = accelerator.prepare(
            DataLoader(ValidationChunks(val_seqs, window), batch_size=train_config.eval_batch_size, shuffle=False)
        )

    history: list[dict[str, Any]] = []
    step = 0
    resumed_loss = float("nan")
    if checkpoint is not None:
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        step, history = int(state["step"]), list(state.get("history", []))
        resumed_loss = float(state.get("running_loss", float("nan")))
    batches: Iterator[dict[str, torch.Tensor]] = iter(
        accelerator.skip_first_batches(train_loader, step) if step else train_loader)
    if checkpoint is not None:
        old = checkpoint / "scheduler.bin"  # written before the scheduler was stepped outside Accelerate
        if old.is_file() and not (checkpoint / "custom_checkpoint_0.pkl").exists() and accelerator.is_main_process:
            shutil.copyfile(old, checkpoint / "custom_checkpoint_0.pkl")
        accelerator.wait_for_everyone()
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as exc:  # a checkpoint without a manifest (older runs) that cannot be read
            raise CheckpointError(f"{checkpoint}: cannot be loaded ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        # Starting a DataLoader iterator (at its first batch) draws a seed from torch's
        # generator, which the uninterrupted run did before its first step: the restored state
        # is put back after it, so dropout and the diffusion noise go on exactly as they would
        # have (tests/test_generate.py checks the weights bit for bit).
        restored = torch.get_rng_state()
        first = next(batches, None)
        torch.set_rng_state(restored)
        batches = itertools.chain([] if first is None else [first], batches)
        accelerator.print(f"resuming from {checkpoint} at step {step}")

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved_path, {
            "tokens_dir": str(tokens_dir),
            "tokens_checkpoint_id": meta.get("checkpoint_id"),
            "mixed_precision": mixed_precision,
            "prior_type": prior_type,
            "prior_config": config_to_dict(prior_config),
            "train_config": config_to_dict(train_config),
            "window": window,
        })
        truncate_metrics(out_dir / CURVE_NAME, step)  # lines a crashed session logged after its checkpoint
    accelerator.wait_for_everyone()
    accelerator.init_trackers("vqaudio-prior", config=flat_config(train_config, prior_config))
    session = session_record(accelerator, mixed_precision, step)
    n_val_codes = sum(len(s.codes) for s in val_seqs)
    figure = "bound" if prior_type == "diffusion" else "cross-entropy"
    accelerator.print(
        f"{prior_type} prior: {accelerator.unwrap_model(model).num_parameters / 1e6:.2f} M parameters, "
        f"{len(speakers)} speakers, K={prior_config.codebook_size}; "
        f"{len(train_seqs)} training utterances ({sum(len(s.codes) for s in train_seqs)} codes), "
        f"{len(val_seqs)} validation utterances ({n_val_codes} codes), window {window} codes"
        + (f"; {len(skipped)} utterances skipped (speaker not in the table)" if skipped else "")
    )
    if "unigram_entropy_bits" in stats:
        accelerator.print(
            f"baselines (bits/code): uniform {stats['uniform_bits']:.3f}, unigram entropy of the "
            f"validation codes {stats['unigram_entropy_bits']:.3f}, per speaker "
            f"{stats['speaker_unigram_entropy_bits']:.3f}"
        )

    def summary() -> dict[str, Any]:
        """The metrics so far (written to ``metrics.json`` after every validation)."""
        result = {
            "prior_type": prior_type,
            "step": step,
            "val_bits_per_code": history[-1]["val_bits_per_code"] if history else float("nan"),
            "best_val_bits_per_code": min((h["val_bits_per_code"] for h in history), default=float("nan")),
            **stats,
            "train_utterances": len(train_seqs),
            "val_utterances": len(val_seqs),
            "val_codes": n_val_codes,
            "window": window,
            "tokens_dir": str(tokens_dir),
            "tokens_checkpoint_id": meta.get("checkpoint_id"),
            "history": history,
        }
        if "unigram_entropy_bits" in stats:
            result["bits_saved_vs_unigram"] = stats["unigram_entropy_bits"] - result["val_bits_per_code"]
        return result

    def run_eval() -> dict[str, Any]:
        bits = float("nan")
        if val_loader is not None and prior_type == "diffusion":
            bits = evaluate_diffusion_bound(model, val_loader, accelerator, train_config.seed)
        elif val_loader is not None:
            bits = evaluate_bits_per_code(model, val_loader, accelerator)
        record = {"step": step, "val_bits_per_code": bits, "train_loss_nats": running_loss,
                  "learning_rate": scheduler.get_last_lr()[0]}
        history.append(record)
        accelerator.log({"valid/bits_per_code": bits}, step=step)
        accelerator.print(
            f"step {step}: validation {figure} {bits:.3f} bits/code (unigram entropy "
            f"{stats.get('unigram_entropy_bits', float('nan')):.3f}), train loss {running_loss:.3f} nats"
        )
        if accelerator.is_main_process:
            atomic_write_json(out_dir / METRICS_NAME, summary())
        return record

    def save_checkpoint() -> None:
        state = {"step": step, "running_loss": running_loss, "history": history}
        save_training_state(accelerator, out_dir, step, train_config.keep_last,
                            extra_files={TRAINER_STATE_NAME: state}, digits=8)
        if accelerator.is_main_process:
            write_session(out_dir, session, started, stopped="running", **session_progress())

    def session_progress() -> dict[str, Any]:
        """This session's progress for its ``sessions.jsonl`` line."""
        return {"end_step": step, "windows_seen": (step - start_step) * train_config.batch_size
                * accelerator.num_processes}

    def _train_steps() -> str:
        """The loop: one optimizer step a batch until ``max_steps``, the time limit or a signal;
        returns why it stopped (``"max_steps"``, ``"max_minutes"``, ``"signal"``)."""
        nonlocal step, running_loss
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        for batch in batches:
            if step >= train_config.max_steps:
                return "max_steps"
            loss = _training_loss(model, accelerator, prior_type, batch, train_config.aux_loss_weight)
            accelerator.backward(loss)
            if train_config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), train_config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            running_loss = value if math.isnan(running_loss) else 0.95 * running_loss + 0.05 * value
            window_loss, window_steps = window_loss + value, window_steps + 1
            bar.update(1)
            bar.set_postfix(loss=f"{running_loss:.3f}", bits=f"{running_loss / math.log(2):.2f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
            reason = stop_reason(accelerator, started, max_minutes, stop_request)
            last = step == train_config.max_steps or reason is not None
            if step % train_config.log_every == 0 or last:
                now = time.perf_counter()
                mean = window_loss / window_steps  # this process's; the mean over processes below
                if accelerator.num_processes > 1:
                    mean = float(accelerator.reduce(torch.tensor(mean, device=accelerator.device), reduction="mean"))
                codes = window_steps * train_config.batch_size * window * accelerator.num_processes
                accelerator.log({"train/loss": mean, "train/bits_per_code": mean / math.log(2),
                                 "train/lr": scheduler.get_last_lr()[0],
                                 "train/codes_per_second": codes / max(now - window_start, 1e-9),
                                 "wall_seconds": round(now - started, 3)}, step=step)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if step % train_config.valid_every == 0 or last:
                run_eval()
                window_start = time.perf_counter()  # throughput excludes validation
            if step % train_config.checkpoint_every == 0 or last:
                save_checkpoint()
                window_start = time.perf_counter()
            if reason is not None:
                why = "by a signal" if reason == "signal" else f"after {max_minutes:g} minutes"
                accelerator.print(f"stopped {why} at step {step}, with a checkpoint; continue with --resume")
                return reason
        return "max_steps"

    running_loss = resumed_loss
    model.train()
    bar = tqdm(total=train_config.max_steps, initial=step, desc="training prior", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    stop_request: list[int] = []  # filled by SIGTERM / SIGINT: stop at the end of the step
    handlers = catch_stop_signals(stop_request)
    start_step = step
    if accelerator.is_main_process:
        session = open_session(out_dir, session, started, **session_progress())
    try:
        stopped = _train_steps()
    finally:
        restore_signals(handlers)
    bar.close()
    if not history or history[-1]["step"] != step:
        run_eval()

    final = {**summary(), "stopped": stopped}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(out_dir)
        atomic_write_json(out_dir / METRICS_NAME, final)
        write_session(out_dir, session, started, stopped=stopped, **session_progress())
    accelerator.end_training()
    accelerator.print(
        f"validation {figure} {final['val_bits_per_code']:.3f} bits/code vs unigram entropy "
        f"{stats.get('unigram_entropy_bits', float('nan')):.3f} bits/code "
        f"(uniform {stats['uniform_bits']:.3f}); prior saved to {out_dir}"
    )
    return final


def _training_loss(model: torch.nn.Module, accelerator: Any, prior_type: str, batch: dict[str, torch.Tensor],
                   aux_loss_weight: float) -> torch.Tensor:
    """The loss of one batch, in nats per code, with the forward pass through the prepared
    (possibly DDP-wrapped) ``model`` so that gradients are synchronised."""
    codes, speaker = batch["codes"], batch["speaker"]
    if prior_type == "autoregressive":
        logits = model(codes, speaker)
        return F.cross_entropy(logits.float().transpose(1, 2), codes, ignore_index=IGNORE_INDEX)
    core = accelerator.unwrap_model(model)
    xt, t = core.noised(codes)
    valid = codes != IGNORE_INDEX
    terms = core.terms_from_logits(model(xt, t, speaker, valid), codes, xt, t)
    return (terms["vlb"] + aux_loss_weight * terms["aux"]).mean()


__all__ = [
    "CodeSequence",
    "CodeWindowDataset",
    "LEGACY_PRIOR_TRAIN_FIELDS",
    "PRIOR_TYPES",
    "PriorTrainConfig",
    "ValidationChunks",
    "entropy_bits",
    "evaluate_diffusion_bound",
    "load_code_sequences",
    "prior_train_config_from_dict",
    "prior_type_of",
    "split_entries",
    "train_prior",
    "unigram_statistics",
]
