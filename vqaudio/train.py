"""Training the VQ-VAE with HuggingFace Accelerate: one loop for CPU, one GPU, or ``accelerate launch``.

The objective is Eq. 3 of van den Oord et al. (2017): the WaveNet decoder's cross-entropy of
the next mu-law sample (teacher forcing) plus the codebook and commitment losses (the codebook
is learned by EMA by default, App. A.1), minimised with Adam on random fixed-length segments
of the training utterances.

Run directory (``RUN``, given by ``--out``)::

    RUN/
      train_config.json          TrainConfig (see there), with a format version
      model_config.json          VQVAEConfig of the model being trained
      speakers.json              the speaker table, names in id order
      data.json                  corpus root, layout, split, utterance counts
      metrics.jsonl              one JSON object per log event: {"step", "train/loss", ...}
      metrics.png                loss curves and codes in use, redrawn at each checkpoint
      model/                     the latest weights as a VQVAE checkpoint (``--checkpoint RUN``)
      checkpoints/step_0001000/  Accelerate ``save_state``: weights, optimizer, RNG states, progress
      examples/step_0001000/     original.wav, reconstruction.wav, conversion_to_NAME.wav,
                                 spectrograms.png (a held-out utterance)
      sessions.jsonl             one line per finished train() call: start and end step, why it
                                 stopped, mixed precision used, device (and GPU name), processes,
                                 threads, CPU, wall seconds, samples seen, command line
      init_from.json             (runs started with ``init_from``) the checkpoint and its id

Metrics (``metrics.jsonl``, one line per ``log_every`` steps, means over those steps and all
processes): ``train/loss`` (Eq. 3, nats), ``train/reconstruction_loss`` (cross-entropy of the
next mu-law sample, nats per sample), ``train/bits_per_sample`` (the same in bits),
``train/commitment_loss`` (before beta), ``train/codebook_loss`` (0 with EMA),
``train/perplexity`` and ``train/codes_in_use`` (per step's batch, of all processes together,
averaged over the steps),
``train/codes_in_use_window`` and ``train/perplexity_window`` (over all batches of the window),
``train/grad_norm`` (before clipping), ``train/lr``, ``train/segments_per_second``,
``train/samples_per_second`` (audio samples at the model rate), ``train/realtime_factor``
(seconds of audio per second), ``epoch``, ``wall_seconds``, and with the auxiliary mel loss
(``DecoderConfig.mel_loss_weight``) ``train/mel_loss``, with a speaker adversary
(``DecoderConfig.speaker_adversary``) ``train/speaker_adversary_loss`` and
``train/speaker_adversary_acc``. Every ``valid_every`` steps a line
with ``valid/loss``, ``valid/reconstruction_loss``, ``valid/bits_per_sample``,
``valid/commitment_loss``, ``valid/perplexity``, ``valid/codes_in_use`` (over the whole
held-out set, centred segments), ``valid/segments`` (and ``valid/mel_loss``,
``valid/speaker_adversary_acc``).

Everything in ``RUN`` is written by the main process, through temporary names and renames.
A fresh run refuses a non-empty ``RUN`` unless ``resume`` (continue from the latest checkpoint)
or ``overwrite`` (delete a previous *run* directory) is given.

Reproducibility and resuming: ``set_seed(seed)`` fixes the initial weights; the batch order of
epoch ``e`` is a permutation drawn from ``seed + e`` (Accelerate's seedable sampler);
``save_state`` stores the model, optimizer, every process's RNG states and the loop position
(step, epoch, batches consumed), and a resumed run skips the batches already consumed in the
current epoch (``skip_first_batches``). Segment offsets inside utterances are a function of
(seed, epoch, utterance index) in :class:`vqaudio.data.SegmentDataset`, so a resumed run sees
the same crops in the same order as an uninterrupted one.

Several processes (``accelerate launch``): the model is wrapped in DistributedDataParallel with
``broadcast_buffers=False``. The quantizer keeps its EMA codebook buffers identical on every
process itself: it all-reduces the assignment counts and latent sums before each EMA update
and broadcasts restarted codes from process 0, so every process computes the same update.
DDP's default buffer broadcast (process 0's buffers copied to all at every forward) would only
add a collective per step and hide a divergence instead of exposing it;
:func:`check_buffers_in_sync` verifies at every checkpoint that the buffers agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vqaudio._files import atomic_write_json
from vqaudio._system import MIXED_PRECISION, available_memory_bytes, resolve_mixed_precision
from vqaudio.config import VQVAEConfig, config_from_dict, config_to_dict
from vqaudio.nn.quantizer import code_entropy
from vqaudio.plots import plot_training_curves
from vqaudio.runs import (
    LR_SCHEDULES,
    METRICS_NAME,
    JSONLinesTracker,
    catch_stop_signals,
    flat_config,
    latest_checkpoint,
    learning_rate_factor,
    open_session,
    read_metrics,
    restore_signals,
    resume_from_checkpoint,
    save_checkpoint,
    session_record,
    stop_reason,
    truncate_metrics,
    write_session,
)

if TYPE_CHECKING:
    from vqaudio.data import Corpus

#: Version of the run-directory layout written by :func:`train`.
RUN_FORMAT_VERSION = 1

TRAIN_CONFIG_NAME = "train_config.json"
MODEL_CONFIG_NAME = "model_config.json"
SPEAKERS_NAME = "speakers.json"
DATA_NAME = "data.json"
MODEL_DIR = "model"
EXAMPLES_DIR = "examples"
INIT_FROM_NAME = "init_from.json"

# ----- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How to train (not what to train: that is :class:`vqaudio.config.VQVAEConfig`).

    Saved as ``RUN/train_config.json``.

    Attributes:
        batch_size: segments per optimizer step and process (before accumulation).
        segment_seconds: length of a training segment in seconds; rounded to a whole number of
            hops (64 samples) at the model rate by :meth:`segment_length`.
        learning_rate: Adam step size. 2e-4 is the VQ-VAE paper's setting; short CPU runs
            (a few hundred steps) learn visibly faster with 1e-3, which the 16 kHz model
            tolerates with gradient clipping.
        warmup_steps: the learning rate rises linearly from ``learning_rate / warmup_steps``
            to ``learning_rate`` over the run's first ``warmup_steps`` steps (0: no warm-up).
            Useful with ``init_from``, where Adam starts without its moment estimates.
        lr_schedule: after the warm-up, ``"constant"`` keeps ``learning_rate``; ``"cosine"``
            decays it to 10 % of itself at ``max_steps`` (:func:`learning_rate_factor`).
        adam_betas: Adam's (beta1, beta2).
        max_steps: optimizer steps to train for (the total, including steps before a resume).
        gradient_accumulation_steps: micro-batches per optimizer step.
        max_grad_norm: clip the global gradient norm to this (``accelerator.clip_grad_norm_``);
            0 disables clipping.
        checkpoint_every: steps between checkpoints (and model exports and examples); the last
            step is always checkpointed.
        valid_every: steps between validation passes over the held-out utterances; the last
            step is always validated. 0 disables validation.
        log_every: steps between lines of ``metrics.jsonl`` (means over the steps since the
            previous line).
        keep_last: checkpoints kept in ``RUN/checkpoints`` (older ones are deleted).
        mixed_precision: ``"auto"`` (bf16 where the hardware runs it natively: CPUs with
            AVX512-BF16 or AMX, GPUs with bf16; fp32 elsewhere), ``"no"`` (fp32), ``"fp16"``
            (CUDA) or ``"bf16"``. What a session used is recorded in ``RUN/sessions.jsonl``.
        seed: seeds the initial weights, the batch order and the segment offsets.
        num_workers: DataLoader worker processes (0 loads in the training process).
        num_valid_per_speaker: utterances of every speaker held out for validation
            (see :func:`vqaudio.data.split_corpus`).
        example_seconds: length in seconds of the held-out excerpt that is reconstructed and
            converted at each checkpoint. Decoding is sample by sample, so keep it short.
        preload: decode and resample all audio once at start (kept as int16 in memory in
            every process); otherwise files are read per item, in the workers.

    Raises:
        ValueError: (on construction) a value out of range.
    """

    batch_size: int = 8
    segment_seconds: float = 0.5
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int = 100_000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    checkpoint_every: int = 1000
    valid_every: int = 1000
    log_every: int = 50
    keep_last: int = 3
    mixed_precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    num_valid_per_speaker: int = 5
    example_seconds: float = 1.0
    preload: bool = True

    def __post_init__(self) -> None:
        positive = ("batch_size", "max_steps", "gradient_accumulation_steps", "checkpoint_every",
                    "log_every", "keep_last")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("valid_every", "num_workers", "num_valid_per_speaker", "max_grad_norm", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("segment_seconds", "learning_rate", "example_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {value}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainConfig.mixed_precision must be one of {MIXED_PRECISION}, "
                             f"got {self.mixed_precision!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")

    def segment_length(self, sample_rate: int, hop_length: int = 64) -> int:
        """Training segment length in samples: ``segment_seconds * sample_rate`` rounded to the
        nearest multiple of ``hop_length`` (at least one hop). E.g. 0.5 s at 16 kHz -> 8000 -> 8000
        (125 hops); 0.25 s at 8 kHz -> 2000 -> 1984 (31 hops)."""
        return max(1, round(self.segment_seconds * sample_rate / hop_length)) * hop_length

    def example_length(self, sample_rate: int, hop_length: int = 64) -> int:
        """Example excerpt length in samples, rounded like :meth:`segment_length`."""
        return max(1, round(self.example_seconds * sample_rate / hop_length)) * hop_length


#: TrainConfig fields that may differ between a run and its resumption; the others
#: (batch, segments, optimizer, seed, split) define the run and must stay the same.
RESUMABLE_FIELDS = frozenset({
    "max_steps", "checkpoint_every", "valid_every", "log_every", "keep_last", "num_workers",
    "example_seconds", "preload", "mixed_precision",
})

#: ``build_model_config`` size names -> (section of VQVAEConfig, field); ``code_dim`` sets both
#: ``quantizer.dim`` and ``decoder.local_channels``.
MODEL_SIZE_FIELDS: dict[str, tuple[str, str]] = {
    "sample_rate": ("", "sample_rate"),
    "encoder_channels": ("encoder", "channels"),
    "causal_encoder": ("encoder", "causal"),
    "gain_jitter": ("encoder", "gain_jitter_db"),
    "codebook_size": ("quantizer", "codebook_size"),
    "code_dim": ("quantizer", "dim"),
    "commitment_cost": ("quantizer", "commitment_cost"),
    "ema": ("quantizer", "ema"),
    "ema_decay": ("quantizer", "decay"),
    "dead_code_threshold": ("quantizer", "dead_code_threshold"),
    "num_stacks": ("decoder", "num_stacks"),
    "layers_per_stack": ("decoder", "layers_per_stack"),
    "residual_channels": ("decoder", "residual_channels"),
    "gate_channels": ("decoder", "gate_channels"),
    "skip_channels": ("decoder", "skip_channels"),
    "kernel_size": ("decoder", "kernel_size"),
    "speaker_channels": ("decoder", "speaker_channels"),
    "num_speakers": ("decoder", "num_speakers"),
    "condition_layers": ("decoder", "condition_layers"),
    "condition_channels": ("decoder", "condition_channels"),
    "mel_loss_weight": ("decoder", "mel_loss_weight"),
    "mel_bands": ("decoder", "mel_bands"),
    "time_jitter": ("decoder", "time_jitter"),
    "input_noise": ("decoder", "input_noise"),
    "pre_emphasis": ("decoder", "pre_emphasis"),
    "lpc_order": ("decoder", "lpc_order"),
    "speaker_adversary": ("decoder", "speaker_adversary"),
}


def build_model_config(base: VQVAEConfig | None = None, **sizes: Any) -> VQVAEConfig:
    """A :class:`VQVAEConfig` from named sizes (the recipe's and CLI's model options).

    Args:
        base: the config to change (default: ``VQVAEConfig()``, the paper's sizes at 16 kHz with
            the CPU-sized WaveNet of :class:`DecoderConfig`).
        **sizes: any of :data:`MODEL_SIZE_FIELDS` (``sample_rate``, ``encoder_channels``
            (sequence of ints, one per stride-2 layer), ``causal_encoder``, ``gain_jitter``, ``codebook_size`` (K), ``code_dim`` (D),
            ``commitment_cost`` (beta), ``ema``, ``ema_decay``, ``dead_code_threshold``,
            ``num_stacks``, ``layers_per_stack``, ``residual_channels``, ``gate_channels``,
            ``skip_channels``, ``kernel_size``, ``speaker_channels``, ``num_speakers``,
            ``condition_layers``, ``condition_channels``, ``mel_loss_weight``, ``mel_bands``,
            ``time_jitter``, ``input_noise``, ``pre_emphasis``, ``lpc_order``, ``speaker_adversary``);
            ``None`` values are ignored.

    Example: ``build_model_config(sample_rate=8000, residual_channels=32, gate_channels=64)``.

    Raises:
        ValueError: an unknown size name, or an inconsistent result.
    """
    cfg = base or VQVAEConfig()
    unknown = sorted(set(sizes) - set(MODEL_SIZE_FIELDS))
    if unknown:
        raise ValueError(f"unknown model size(s) {unknown}; known: {sorted(MODEL_SIZE_FIELDS)}")
    changes: dict[str, dict[str, Any]] = {"": {}, "encoder": {}, "quantizer": {}, "decoder": {}}
    for name, value in sizes.items():
        if value is None:
            continue
        section, field_name = MODEL_SIZE_FIELDS[name]
        if name == "encoder_channels":
            value = tuple(int(c) for c in value)
        changes[section][field_name] = value
        if name == "code_dim":
            changes["decoder"]["local_channels"] = value
    return dataclasses.replace(
        cfg,
        encoder=dataclasses.replace(cfg.encoder, **changes["encoder"]),
        quantizer=dataclasses.replace(cfg.quantizer, **changes["quantizer"]),
        decoder=dataclasses.replace(cfg.decoder, **changes["decoder"]),
        **changes[""],
    )


# ----- results and loop state -----------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        run_dir: the run directory.
        model_dir: ``run_dir / "model"``, the exported checkpoint (``VQVAE.from_pretrained``).
        step: optimizer steps done in total.
        resumed_from: the step the run resumed from (``None`` for a fresh run).
        train_loss: mean training loss (nats) of the last log window.
        valid_loss: the last validation loss (nats), ``None`` without validation.
        wall_seconds: training wall time over all sessions of the run, in seconds.
        stopped: why the run stopped: ``"max_steps"`` (finished), ``"max_minutes"`` (out of
            time) or ``"signal"`` (SIGTERM / SIGINT); resume to continue the last two.
    """

    run_dir: Path
    model_dir: Path
    step: int
    resumed_from: int | None
    train_loss: float | None
    valid_loss: float | None
    wall_seconds: float
    stopped: str = "max_steps"


@dataclass
class TrainProgress:
    """The loop's position, saved in every checkpoint (``accelerator.register_for_checkpointing``).

    Attributes:
        step: optimizer steps done.
        epoch: current pass over the training utterances (0-based).
        batches_in_epoch: micro-batches of the current epoch already consumed.
        segments_seen: training segments consumed, all processes.
        wall_seconds: training wall time so far, over all sessions.
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    segments_seen: int = 0
    wall_seconds: float = 0.0

    def state_dict(self) -> dict[str, int | float]:
        """The fields as a dict (what ``save_state`` stores)."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        """Restore the fields from :meth:`state_dict` output."""
        for name, value in state.items():
            setattr(self, name, type(getattr(self, name))(value))


# ----- metrics tracker -----------------------------------------------------------------------


# ----- the training loop ---------------------------------------------------------------------


def train(
    data: str | os.PathLike | Sequence[str | os.PathLike] | Corpus,
    out: str | os.PathLike,
    model_config: VQVAEConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    mic: str | None = None,
    split_method: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cpu: bool = False,
    log_with: Sequence[str] = (),
    progress: bool = True,
    init_from: str | os.PathLike | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train a VQ-VAE on a corpus with Accelerate and keep everything in the run directory ``out``.

    Runs on CPU, one GPU, or several processes started by ``accelerate launch`` / ``torchrun``
    (one Accelerator per process; Accelerate allows one set of Accelerator settings per
    process, so call this once per process).

    Args:
        data: a corpus folder (VCTK 0.80 / 0.92, speaker folders, FSDD; see
            :func:`vqaudio.data.discover_corpus`), a list of files and folders, or a
            :class:`vqaudio.data.Corpus`.
        out: the run directory (see the module doc).
        model_config: what to train; ``decoder.num_speakers`` is set to the size of the
            corpus's speaker table. Default: the saved config when resuming, else
            ``VQVAEConfig()``.
        train_config: how to train. Default: the saved config when resuming, else
            ``TrainConfig()``. When resuming, only :data:`RESUMABLE_FIELDS` may differ from
            the saved one.
        mic: VCTK 0.92 microphone (``"mic1"`` / ``"mic2"``); default ``"mic1"``, or the run's
            when resuming.
        split_method: train/validation split method of :func:`vqaudio.data.split_corpus`;
            default ``"auto"``, or the run's when resuming (a different one is refused, as is
            a corpus whose held-out utterances differ from the run's).
        resume: continue from the latest checkpoint in ``out``; when ``out`` holds no run yet,
            start a new one there.
        overwrite: delete a previous run in ``out`` first (only a folder holding
            ``train_config.json``, or an empty one, is ever deleted).
        cpu: train on the CPU even if a GPU is available.
        log_with: extra Accelerate trackers (``"tensorboard"``, ``"wandb"``...), logging into
            ``out``; ``metrics.jsonl`` is always written.
        progress: show progress bars (main process only).
        init_from: start a new run from the weights of this VQ-VAE checkpoint (a directory, a
            run, or a bundled name such as ``"fsdd-8k"``) instead of a random initialisation;
            the optimizer starts afresh (pair it with ``warmup_steps``). ``model_config``
            defaults to the checkpoint's and must otherwise equal it (but for the number of
            speakers). Speaker embeddings are copied by name; speakers the checkpoint does
            not know keep their random rows. Recorded in ``RUN/init_from.json``; ignored when
            a checkpoint of the run itself is resumed.
        max_minutes: stop after this many minutes of wall time in this call (data loading
            included), at the end of a step, with a validation, a checkpoint and an exported
            model, so a session fits its time window; ``--resume`` continues it. The last
            checkpoint takes a few more seconds than the limit. SIGTERM or SIGINT (Ctrl-C)
            stops the same way (in the main thread; a second signal kills at once).

    Returns:
        :class:`TrainResult`.

    Raises:
        FileExistsError: ``out`` is not empty and neither ``resume`` nor ``overwrite`` is given,
            or ``overwrite`` on a folder that is not a vqaudio run.
        ValueError: ``resume`` with configs or a speaker table that differ from the saved run;
            ``init_from`` with a model config other than the checkpoint's; a training set
            smaller than one batch; bad config values.
        vqaudio.checkpoint.CheckpointError: ``init_from`` is not a loadable checkpoint.
        vqaudio.data.CorpusError: the corpus cannot be found or split.
        vqaudio.audio.AudioError: an audio file cannot be read (names the file).
    """
    from vqaudio.data import Corpus, SegmentDataset, discover_corpus, speaker_table, split_corpus
    from vqaudio.model import VQVAE, resolve_checkpoint

    started = time.perf_counter()
    run = Path(out)
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    if max_minutes is not None and not (max_minutes > 0 and math.isfinite(max_minutes)):
        raise ValueError(f"max_minutes must be a positive number, got {max_minutes}")
    existing = _run_dir_state(run)  # checked identically by every process, before any write
    resuming = resume and existing == "run"
    if existing == "other" or (existing == "run" and not resume and not overwrite):
        raise FileExistsError(_refusal_message(run, existing))

    saved_data: dict[str, Any] = {}
    if resuming:
        saved_train = _read_train_config(run)
        saved_model = config_from_dict(VQVAEConfig, _read_json(run / MODEL_CONFIG_NAME))
        train_config = _check_resumable(saved_train, train_config or saved_train)
        model_config = model_config or saved_model
        saved_data = _read_json(run / DATA_NAME)
        for name, given in (("split_method", split_method), ("mic", mic)):
            if given is not None and saved_data.get(name, given) != given:
                raise ValueError(f"{run}: the run was trained with {name} {saved_data[name]!r}, not {given!r}; "
                                 f"resume with the same (or leave it out)")
    mic = mic or saved_data.get("mic", "mic1")
    split_method = split_method or saved_data.get("split_method", "auto")
    init_model = None
    if init_from is not None and not (resuming and latest_checkpoint(run) is not None):
        init_model = VQVAE.from_pretrained(resolve_checkpoint(init_from))
        model_config = model_config or init_model.config
        _check_init_config(init_from, init_model.config, model_config)
    train_config = train_config or TrainConfig()
    model_config = model_config or VQVAEConfig()
    cfg = train_config

    device_type = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    mixed_precision = resolve_mixed_precision(cfg.mixed_precision, device_type)
    check_activation_memory(model_config, cfg, mixed_precision, device_type)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with=[JSONLinesTracker(run / METRICS_NAME), *log_with],
        project_dir=str(run),
    )
    main = accelerator.is_main_process
    show = progress and main
    if existing == "run" and overwrite and not resume:
        if main:
            shutil.rmtree(run)
        accelerator.wait_for_everyone()

    # --- data
    corpus = data if isinstance(data, Corpus) else discover_corpus(data, mic=mic)
    train_corpus, valid_corpus = split_corpus(corpus, cfg.num_valid_per_speaker, method=split_method)
    speakers = speaker_table(corpus)
    if not speakers:
        speakers = ["unknown"]  # a corpus without speaker labels: one global embedding
    model_config = dataclasses.replace(
        model_config, decoder=dataclasses.replace(model_config.decoder, num_speakers=len(speakers))
    )
    if resuming:
        _check_same_run(run, model_config, speakers)
    sample_rate, hop = model_config.sample_rate, model_config.hop_length
    segment_length = cfg.segment_length(sample_rate, hop)
    table = speakers if corpus.speakers else None
    accelerator.print(
        f"corpus {corpus.root or 'files'} ({corpus.layout}): {len(speakers)} speakers, "
        f"{len(train_corpus)} training / {len(valid_corpus)} held-out utterances; "
        f"segments of {segment_length} samples ({segment_length / sample_rate:.3f} s at {sample_rate} Hz)"
    )
    train_set = SegmentDataset(
        train_corpus, table, sample_rate=sample_rate, segment_length=segment_length,
        hop_length=hop, random_offsets=True, preload=cfg.preload,
        seed=cfg.seed * 65536 + accelerator.process_index, num_threads=2, progress=show,
    )
    if saved_data.get("valid_utterances") not in (None, [u.utterance_id for u in valid_corpus.utterances]):
        raise ValueError(f"{run}: the held-out utterances of this corpus differ from the run's; resume with "
                         f"the same data")
    lengths = train_set.lengths
    if main and lengths and max(lengths) < segment_length:
        print(f"warning: segments of {segment_length / sample_rate:.3f} s are longer than every training "
              f"utterance (longest {max(lengths) / sample_rate:.3f} s): the rest of each is zero padding; "
              f"lower --segment-seconds", file=sys.stderr)
    global_batch = cfg.batch_size * accelerator.num_processes
    if len(train_set) < global_batch:
        raise ValueError(
            f"{corpus.root}: {len(train_set)} training utterances are fewer than one batch "
            f"({cfg.batch_size} x {accelerator.num_processes} processes); lower the batch size"
        )
    valid_set = None
    if len(valid_corpus) and cfg.valid_every:
        valid_set = SegmentDataset(
            valid_corpus, table, sample_rate=sample_rate, segment_length=segment_length,
            hop_length=hop, random_offsets=False, preload=True, progress=show,
        )
    example_utterance = (valid_corpus.utterances or train_corpus.utterances)[0]
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        num_workers=cfg.num_workers, pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    # --- run directory (fresh runs)
    if main and not resuming:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / TRAIN_CONFIG_NAME, {"format_version": RUN_FORMAT_VERSION,
                                                    "config": config_to_dict(cfg)})
        atomic_write_json(run / MODEL_CONFIG_NAME, config_to_dict(model_config))
        atomic_write_json(run / SPEAKERS_NAME, speakers)
        atomic_write_json(run / DATA_NAME, {
            "data": [str(p) for p in data] if isinstance(data, (list, tuple)) else str(
                corpus.root if isinstance(data, Corpus) else data),
            "layout": corpus.layout, "mic": mic, "split_method": split_method,
            "num_train_utterances": len(train_corpus), "num_valid_utterances": len(valid_corpus),
            "valid_utterances": [u.utterance_id for u in valid_corpus.utterances],
        })
    accelerator.wait_for_everyone()

    # --- model, optimizer
    set_seed(cfg.seed)
    model = VQVAE(model_config, speakers)
    if init_model is not None:
        copied = initialize_from(model, init_model)
        accelerator.print(f"initialized from {init_from} (checkpoint {init_model.checkpoint_id}); "
                          f"speaker embeddings copied for {len(copied)} of {len(speakers)} speakers")
        if main:
            atomic_write_json(run / INIT_FROM_NAME, {
                "init_from": str(init_from), "checkpoint_id": init_model.checkpoint_id,
                "speakers_copied": copied,
            })
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers, which
        # Accelerate's DistributedDataParallelKwargs cannot pass yet; the old flag still works.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated", category=FutureWarning)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    state = TrainProgress()
    accelerator.register_for_checkpointing(state)

    resumed_from = None
    latest = resume_from_checkpoint(run, lambda f: accelerator.load_state(str(f)), accelerator.print) if resuming else None
    if latest is not None:
        resumed_from = state.step
        if main:
            truncate_metrics(run / METRICS_NAME, state.step)
        accelerator.print(f"resumed {run} from {latest.name} (step {state.step}, epoch {state.epoch})")
    elif resuming:
        accelerator.print(f"{run}: no checkpoint yet; starting from step 0")
        if main:
            truncate_metrics(run / METRICS_NAME, 0)
    accelerator.wait_for_everyone()
    accelerator.init_trackers("vqaudio", config=flat_config(cfg, model_config))
    session = session_record(accelerator, mixed_precision, state.step)
    accelerator.print(f"mixed precision: {mixed_precision} (asked: {cfg.mixed_precision}); "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"{torch.get_num_threads()} thread(s) each")

    unwrapped: VQVAE = accelerator.unwrap_model(model)
    window = _MetricWindow(model_config.quantizer.codebook_size, accelerator.device)
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="train", unit="step",
               disable=not show, dynamic_ncols=True)
    last_train: dict[str, float] = {}
    last_valid: dict[str, float] = {}
    clock = time.perf_counter()
    window_start = clock  # throughput excludes validation, checkpoints and examples

    def tick() -> None:
        nonlocal clock
        now = time.perf_counter()
        state.wall_seconds += now - clock
        clock = now

    def session_progress() -> dict[str, Any]:
        """This session's progress for its ``sessions.jsonl`` line."""
        return {"end_step": state.step, "samples_seen": state.segments_seen * segment_length,
                "wall_seconds_total": round(state.wall_seconds, 1)}

    if main:
        session = open_session(run, session, started, **session_progress())

    def lr_at(step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        return cfg.learning_rate * learning_rate_factor(step, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule)

    stopped = "max_steps"
    stop_request: list[int] = []  # filled by SIGTERM / SIGINT: stop at the end of the step
    handlers = catch_stop_signals(stop_request)
    try:
        model.train()
        while state.step < cfg.max_steps:
            train_loader.set_epoch(state.epoch)  # the batch order of an epoch depends on seed + epoch
            if hasattr(train_set, "set_epoch"):  # Accelerate forwards it only in some layouts
                train_set.set_epoch(state.epoch)
            loader = (accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
                      if state.batches_in_epoch else train_loader)
            for batch in loader:
                with accelerator.accumulate(model):
                    output = model(batch["wav"], batch["speaker"])
                    accelerator.backward(output.loss)
                    grad_norm = None
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(state.step)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                state.segments_seen += batch["wav"].shape[0] * accelerator.num_processes
                window.add(output, grad_norm, batch["wav"].shape[0] * accelerator.num_processes,
                           batch["wav"].shape[-1])
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                bar.update(1)
                reason = stop_reason(accelerator, started, max_minutes, stop_request)
                last = state.step == cfg.max_steps or reason is not None
                if reason is not None and state.step < cfg.max_steps:
                    stopped = reason

                if state.step % cfg.log_every == 0 or last:
                    if show:  # on log steps only: reading the window's sums waits for the device
                        bar.set_postfix(window.postfix(), refresh=False)
                    tick()
                    now = time.perf_counter()
                    last_train = window.reduce(accelerator, now - window_start, sample_rate)
                    window_start = now
                    last_train.update({"train/lr": optimizer.param_groups[0]["lr"],
                                       "epoch": state.epoch, "wall_seconds": round(state.wall_seconds, 3)})
                    accelerator.log(last_train, step=state.step)

                paused = time.perf_counter()
                if valid_set is not None and (state.step % cfg.valid_every == 0 or last):
                    if main:
                        with accelerator.autocast():
                            last_valid = evaluate_segments(unwrapped, valid_set, batch_size=cfg.batch_size)
                        model.train()
                        accelerator.log(last_valid, step=state.step)
                        bar.write(_format_valid(state.step, last_valid))
                    accelerator.wait_for_everyone()

                if state.step % cfg.checkpoint_every == 0 or last:
                    tick()
                    save_checkpoint(accelerator, run, state.step, cfg.keep_last)
                    check_buffers_in_sync(accelerator, model)
                    if main:
                        write_session(run, session, started, stopped="running", **session_progress())
                        export_model(unwrapped, run / MODEL_DIR)
                        plot_training_curves(run / "metrics.png", read_metrics(run), title=str(run))
                        write_examples(
                            unwrapped, example_utterance.path, example_utterance.speaker,
                            run / EXAMPLES_DIR / f"step_{state.step:07d}",
                            num_samples=cfg.example_length(sample_rate, hop), seed=cfg.seed,
                        )
                        model.train()
                    accelerator.wait_for_everyone()
                window_start += time.perf_counter() - paused
                if last:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
                continue
            break
    finally:
        restore_signals(handlers)
    bar.close()
    tick()
    if stopped == "max_minutes":
        accelerator.print(f"stopped after {max_minutes:g} minutes at step {state.step}; "
                          f"continue with --resume")
    elif stopped == "signal":
        accelerator.print(f"stopped by a signal at step {state.step}, with a checkpoint; continue with --resume")
    if main:
        write_session(run, session, started, stopped=stopped, **session_progress())
    accelerator.end_training()
    return TrainResult(
        run_dir=run, model_dir=run / MODEL_DIR, step=state.step, resumed_from=resumed_from,
        train_loss=last_train.get("train/loss"), valid_loss=last_valid.get("valid/loss"),
        wall_seconds=state.wall_seconds, stopped=stopped,
    )


def activation_bytes(model_config: VQVAEConfig, batch_size: int, segment_samples: int, mixed_precision: str) -> int:
    """Estimated memory (bytes) of the activations one training step of one process keeps
    for its backward pass: per sample and WaveNet layer the past taps (``k R``), the gate
    input and its tanh and sigmoid (``2 G``), the gate output (``G / 2``) and the residual and
    skip outputs with their sum (``2 (R + S)``), plus the head's logits, softmax and gradient
    (``3 Q``), times ``batch_size x segment_samples``; 4 bytes a value (2 for the layers under
    bf16 or fp16). The encoder's share (at most 1/2 of the sample rate's width) is small
    beside it. Measured on the CPU (fp32, 2 x 10 layers, batch 8): within 0.7-1.05 of the
    peak resident memory of a step at residual 32 and 64, segments of 0.5-8 s.

    Args:
        model_config: the model; batch_size: segments per step of one process;
        segment_samples: samples per segment; mixed_precision: ``"no"``, ``"bf16"``, ``"fp16"``.

    Returns:
        bytes.
    """
    d = model_config.decoder
    per_layer = d.kernel_size * d.residual_channels + 2 * d.gate_channels + d.gate_channels // 2 \
        + 2 * (d.residual_channels + d.skip_channels)
    layer_bytes = 2 if mixed_precision in ("bf16", "fp16") else 4
    per_sample = len(d.dilations) * per_layer * layer_bytes + 3 * d.quantization_channels * 4
    return int(batch_size * segment_samples * per_sample)


def check_activation_memory(model_config: VQVAEConfig, cfg: TrainConfig, mixed_precision: str, device_type: str,
                            available: int | None = None) -> None:
    """Refuse, before the first step, a batch whose activations (:func:`activation_bytes`)
    would not fit in the memory available (:func:`available_memory_bytes`, or ``available``).

    Raises:
        ValueError: one line with the estimate, what is available, and the settings to change.
    """
    segment = cfg.segment_length(model_config.sample_rate, model_config.hop_length)
    micro_batch = cfg.batch_size  # one DataLoader batch; accumulated steps free theirs
    need = activation_bytes(model_config, micro_batch, segment, mixed_precision)
    available = available_memory_bytes(device_type) if available is None else available
    if available is not None and need > 0.9 * available:
        d = model_config.decoder
        raise ValueError(
            f"a training step would need about {need / 2**30:.1f} GiB of activations (batch {micro_batch} x "
            f"{segment / model_config.sample_rate:g} s segments x {len(d.dilations)} WaveNet layers of residual "
            f"{d.residual_channels} / gate {d.gate_channels}, {mixed_precision}), but {available / 2**30:.1f} GiB is "
            f"available on the {device_type}; lower --segment-seconds or --batch-size (to keep the batch, lower "
            f"--batch-size and raise --gradient-accumulation-steps)")


class _MetricWindow:
    """Running sums of the training metrics between two log lines (kept on the device)."""

    KEYS = ("loss", "reconstruction_loss", "commitment_loss", "codebook_loss", "perplexity", "codes_in_use",
            "mel_loss", "speaker_adversary_loss", "speaker_adversary_acc")

    def __init__(self, codebook_size: int, device: torch.device):
        self.codebook_size = codebook_size
        self.device = device
        self.mel = False  # the model has the auxiliary mel loss
        self.adversary = False  # the model has a speaker adversary
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=self.device)
        self.grad_norm = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, count
        self.counts = torch.zeros(self.codebook_size, dtype=torch.float64, device=self.device)
        self.batches = 0
        self.segments = 0
        self.samples = 0

    def add(self, output: Any, grad_norm: torch.Tensor | None, segments: int, segment_length: int) -> None:
        zero = torch.zeros((), device=self.device)
        values = torch.stack([(getattr(output, k) if getattr(output, k) is not None else zero).detach().double()
                              for k in self.KEYS])
        self.sums += values
        if grad_norm is not None:
            self.grad_norm += torch.stack([torch.as_tensor(grad_norm, device=self.device).double(),
                                           torch.ones((), dtype=torch.float64, device=self.device)])
        self.counts += torch.bincount(output.codes.reshape(-1), minlength=self.codebook_size).double()
        self.mel = self.mel or output.mel_loss is not None
        self.adversary = self.adversary or output.speaker_adversary_loss is not None
        self.batches += 1
        self.segments += segments
        self.samples += segments * segment_length

    def postfix(self) -> dict[str, str]:
        """Running means of this process's window for the progress bar."""
        means = (self.sums / max(self.batches, 1)).tolist()
        m = dict(zip(self.KEYS, means))
        return {"loss": f"{m['loss']:.3f}", "ppl": f"{m['perplexity']:.1f}",
                "codes": f"{m['codes_in_use']:.0f}"}

    def reduce(self, accelerator: Any, seconds: float, sample_rate: int) -> dict[str, float]:
        """Means over the window and all processes (a collective: every process calls it)."""
        packed = torch.cat([self.sums, self.grad_norm,
                            torch.tensor([float(self.batches)], dtype=torch.float64, device=self.device)])
        packed = accelerator.reduce(packed, reduction="sum")
        counts = accelerator.reduce(self.counts, reduction="sum")
        n = len(self.KEYS)
        batches = max(float(packed[n + 2]), 1.0)
        means = dict(zip(self.KEYS, (packed[:n] / batches).tolist()))
        used = int((counts > 0).sum())
        record = {
            "train/loss": means["loss"],
            "train/reconstruction_loss": means["reconstruction_loss"],
            "train/bits_per_sample": means["reconstruction_loss"] / math.log(2),
            "train/commitment_loss": means["commitment_loss"],
            "train/codebook_loss": means["codebook_loss"],
            "train/perplexity": means["perplexity"],
            "train/codes_in_use": means["codes_in_use"],
            "train/codes_in_use_window": used,
            "train/perplexity_window": math.exp(code_entropy(counts)) if used else 0.0,
            "train/segments_per_second": self.segments / max(seconds, 1e-9),
            "train/samples_per_second": self.samples / max(seconds, 1e-9),
            "train/realtime_factor": self.samples / sample_rate / max(seconds, 1e-9),
        }
        if self.mel:
            record["train/mel_loss"] = means["mel_loss"]
        if self.adversary:
            record["train/speaker_adversary_loss"] = means["speaker_adversary_loss"]
            record["train/speaker_adversary_acc"] = means["speaker_adversary_acc"]
        if float(packed[n + 1]) > 0:
            record["train/grad_norm"] = float(packed[n] / packed[n + 1])
        self.reset()
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}


# ----- validation, checkpoints, examples -----------------------------------------------------


@torch.no_grad()
def evaluate_segments(model: Any, dataset: torch.utils.data.Dataset, batch_size: int = 8) -> dict[str, float]:
    """Validation metrics of ``model`` on every item of ``dataset`` (eval mode; the codebook is
    not updated).

    Args:
        model: a :class:`vqaudio.model.VQVAE` (unwrapped); left in eval mode.
        dataset: items ``{"wav": [1, T] float32, "speaker": [] int64}`` (e.g. a
            :class:`vqaudio.data.SegmentDataset` with ``random_offsets=False``).
        batch_size: segments per forward pass.

    Returns:
        ``valid/loss``, ``valid/reconstruction_loss`` (nats per sample),
        ``valid/bits_per_sample``, ``valid/commitment_loss``, ``valid/perplexity`` (of the code
        distribution over the whole set), ``valid/codes_in_use`` (distinct codes over the
        whole set), ``valid/segments``, with the auxiliary mel loss ``valid/mel_loss``, and
        with a speaker adversary ``valid/speaker_adversary_acc`` (its share of frames told
        right): means weighted by batch size.
    """
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         generator=torch.Generator())
    totals = {"loss": 0.0, "reconstruction_loss": 0.0, "commitment_loss": 0.0, "mel_loss": 0.0,
              "speaker_adversary_acc": 0.0}
    counts = torch.zeros(model.config.quantizer.codebook_size, dtype=torch.float64)
    n = 0
    for batch in loader:
        wav = batch["wav"].to(model.device)
        out = model(wav, batch["speaker"].to(model.device))
        b = wav.shape[0]
        for k in totals:
            totals[k] += float(getattr(out, k) if getattr(out, k) is not None else 0.0) * b
        counts += torch.bincount(out.codes.reshape(-1).cpu(), minlength=counts.numel()).double()
        n += b
    rec = totals["reconstruction_loss"] / n
    return {
        "valid/loss": round(totals["loss"] / n, 6),
        "valid/reconstruction_loss": round(rec, 6),
        "valid/bits_per_sample": round(rec / math.log(2), 6),
        "valid/commitment_loss": round(totals["commitment_loss"] / n, 6),
        "valid/perplexity": round(math.exp(code_entropy(counts)), 4),
        "valid/codes_in_use": int((counts > 0).sum()),
        "valid/segments": n,
        **({"valid/mel_loss": round(totals["mel_loss"] / n, 6)} if model.decoder.mel_head is not None else {}),
        **({"valid/speaker_adversary_acc": round(totals["speaker_adversary_acc"] / n, 6)}
           if model.speaker_adversary is not None else {}),
    }


def initialize_from(model: Any, source: Any) -> list[str]:
    """Copy the weights and buffers (codebook, EMA statistics) of ``source`` into ``model``.

    Both are :class:`vqaudio.model.VQVAE` with the same config but for the speaker table and
    the :data:`ADDABLE_DECODER_FIELDS`: speaker-embedding rows are copied by speaker name, and
    speakers ``source`` does not know keep ``model``'s rows; conditioning blocks and the mel
    head that only ``model`` has keep their initialisation (a new conditioning block starts as
    the identity, so the model decodes as ``source`` did), and those only ``source`` has are
    left out. A speaker adversary (``decoder.speaker_adversary``) is never copied: its
    classifier starts afresh, whatever the source had.

    Returns:
        the names of the speakers whose embedding was copied, in ``model``'s order.

    Raises:
        ValueError: a tensor other than the speaker embedding differs in shape.
    """
    target = model.state_dict()
    key = "decoder.speaker_embedding.weight"
    copied: list[str] = []
    with torch.no_grad():
        for name, value in source.state_dict().items():
            if name == key:
                for i, speaker in enumerate(model.speakers):
                    if speaker in source.speakers:
                        target[name][i] = value[source.speakers.index(speaker)]
                        copied.append(speaker)
                continue
            if name.startswith("speaker_adversary."):  # a training aid: it always starts afresh
                continue
            if name not in target and name.startswith(("decoder.condition_stack.", "decoder.mel_head.")):
                continue
            if name not in target or target[name].shape != value.shape:
                raise ValueError(f"cannot initialize from the checkpoint: {name} differs "
                                 f"({tuple(value.shape)} there)")
            target[name].copy_(value)
    return copied


#: Decoder fields a run started ``--init-from`` a checkpoint may set otherwise than the
#: checkpoint (:func:`initialize_from`): conditioning blocks, the auxiliary mel loss, time
#: jitter, input noise and a speaker adversary can be added to a trained model (or dropped), so
#: an A/B can continue the same weights both ways. (Pre-emphasis cannot: it changes what the
#: WaveNet's output means.)
ADDABLE_DECODER_FIELDS = ("condition_layers", "condition_channels", "mel_loss_weight", "mel_bands", "time_jitter",
                          "input_noise", "speaker_adversary")


def _check_init_config(init_from: Any, source: VQVAEConfig, given: VQVAEConfig) -> None:
    """Raise ValueError when ``given`` differs from the checkpoint's config (``source``) in
    anything but the number of speakers (the speaker table comes from the corpus), the
    :data:`ADDABLE_DECODER_FIELDS`, the encoder's gain jitter (a training setting) and the
    decoding temperature (not used in training)."""
    def flat(c: VQVAEConfig) -> dict[str, Any]:
        decoder = dataclasses.replace(c.decoder, num_speakers=0, temperature=1.0,
                                      **{f: 1 for f in ADDABLE_DECODER_FIELDS})
        encoder = dataclasses.replace(c.encoder, gain_jitter_db=0.0)  # a training setting, no weights
        return flat_config(dataclasses.replace(c, encoder=encoder, decoder=decoder))

    a, b = flat(source), flat(given)
    differ = [f"{k}: checkpoint {a[k]!r}, given {b.get(k)!r}" for k in a if a[k] != b.get(k)]
    if differ:
        raise ValueError(f"--init-from {init_from}: the model config differs from the checkpoint's "
                         f"({', '.join(differ)}); leave the model options out to use the checkpoint's")


def export_model(model: Any, model_dir: Path) -> Path:
    """``model.save_pretrained`` into ``model_dir``, replacing its previous content.

    Written to ``.model.tmp`` beside it and swapped in by renames, so ``model_dir`` always
    holds one complete checkpoint (between the two renames it is briefly absent).
    """
    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    old = model_dir.with_name(f".{model_dir.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    model.save_pretrained(tmp)
    if model_dir.exists():
        os.replace(model_dir, old)
    os.replace(tmp, model_dir)
    shutil.rmtree(old, ignore_errors=True)
    return model_dir


def check_buffers_in_sync(accelerator: Any, model: torch.nn.Module) -> None:
    """Check that the model buffers (the EMA codebook, cluster sizes) agree across processes,
    by two moments of each: its sum and its sum of squares (float64) must be equal on every
    process. A cheap check, not a comparison of every value (different buffers with equal
    moments would pass).

    A collective (every process calls it); does nothing with one process.

    Raises:
        RuntimeError: the buffers differ; names them.
    """
    if accelerator.num_processes == 1:
        return
    names, sums = [], []
    for name, buf in accelerator.unwrap_model(model).named_buffers():
        b = buf.detach().double()
        names.append(name)
        sums.append(torch.stack([b.sum(), (b * b).sum()]))
    local = torch.stack(sums)  # [N, 2]
    gathered = accelerator.gather(local[None])  # [P, N, 2]
    differ = [names[i] for i in range(len(names)) if not bool((gathered[:, i] == gathered[0, i]).all())]
    if differ:
        raise RuntimeError(f"model buffers differ between processes: {', '.join(differ)}")


def write_examples(
    model: Any,
    path: str | os.PathLike,
    speaker: str | None,
    out_dir: str | os.PathLike,
    num_samples: int,
    seed: int = 0,
    target_speaker: str | None = None,
) -> dict[str, Path]:
    """Reconstruct (and convert to another speaker) a centred excerpt of one recording.

    Writes ``original.wav``, ``reconstruction.wav``, ``conversion_to_{target}.wav`` (when the
    model has another speaker) and ``spectrograms.png`` (original, reconstruction and
    conversion, one panel each) into ``out_dir``, at the model's rate.

    Args:
        model: a :class:`vqaudio.model.VQVAE`; left in eval mode.
        path: the recording (any rate; resampled to the model's).
        speaker: its speaker name; ``None`` or a name not in the table uses speaker id 0.
        out_dir: output folder (created).
        num_samples: excerpt length in samples at the model rate (the centre of the file;
            rounded down to whole hops; a shorter file is used whole).
        seed: seeds the decoder's sampling.
        target_speaker: conversion target; default: the last speaker of the table other than
            ``speaker``.

    Returns:
        name (``"original"``, ``"reconstruction"``, ``"conversion_to_NAME"``, ``"spectrograms"``)
        -> path written.

    Raises:
        vqaudio.audio.AudioError: the recording cannot be read.
    """
    from vqaudio.audio import load_audio, save_audio
    from vqaudio.plots import plot_spectrograms

    model.eval()
    out_dir = Path(out_dir)
    sr, hop = model.sample_rate, model.hop_length
    wav = load_audio(path, sr)
    n = min(num_samples, len(wav)) // hop * hop
    if n == 0:
        wav = np.pad(wav, (0, hop - len(wav)))
        n = hop
    start = (len(wav) - n) // 2
    excerpt = wav[start : start + n]
    source_id = model.speakers.index(speaker) if speaker in model.speakers else 0
    others = [s for s in model.speakers if s != model.speakers[source_id]]
    target = target_speaker or (others[-1] if others else None)
    ids = [source_id] + ([model.speaker_id(target)] if target is not None else [])

    x = torch.from_numpy(excerpt).to(model.device)[None, None]
    codes = model.encode(x)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with _one_cpu_thread(model.device):
        decoded = model.decode(codes.repeat(len(ids), 1), torch.tensor(ids, device=model.device),
                               generator=generator).cpu()

    written = {"original": save_audio(out_dir / "original.wav", excerpt, sr),
               "reconstruction": save_audio(out_dir / "reconstruction.wav", decoded[0, 0], sr)}
    panels = {"original": excerpt, "reconstruction": decoded[0, 0].numpy()}
    if target is not None:
        key = f"conversion_to_{target}"
        written[key] = save_audio(out_dir / f"{key}.wav", decoded[1, 0], sr)
        panels[f"conversion to {target}"] = decoded[1, 0].numpy()
    title = f"{Path(path).name} ({model.speakers[source_id]}), {n / sr:.2f} s at {sr} Hz"
    written["spectrograms"] = plot_spectrograms(out_dir / "spectrograms.png", panels, sr, title=title)
    return written


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run sample-by-sample CPU decoding on one intra-op thread, then restore the count.

    Each generation step is a few tiny matrix products: splitting them over threads costs more
    than it saves, and on a loaded machine the threads' synchronisation made decoding 3-60x
    slower than one thread in our measurements.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----- run directory helpers -----------------------------------------------------------------


def _run_dir_state(run: Path) -> str:
    """``"missing"`` / ``"empty"`` / ``"run"`` (holds train_config.json) / ``"other"``."""
    if not run.exists():
        return "missing"
    if not run.is_dir():
        return "other"
    if (run / TRAIN_CONFIG_NAME).is_file():
        return "run"
    return "other" if any(run.iterdir()) else "empty"


def _refusal_message(run: Path, existing: str) -> str:
    if existing == "other":
        what = "is a file" if not run.is_dir() else "is not empty and is not a vqaudio run directory"
        return f"{run} {what}; choose another --out (nothing was changed)"
    steps = latest_checkpoint(run)
    where = f" (latest checkpoint {steps.name})" if steps else ""
    return (f"{run} already holds a training run{where}; pass --resume to continue it, "
            f"--overwrite to delete it and start again, or choose another --out")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; the run directory is incomplete") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _read_train_config(run: Path) -> TrainConfig:
    meta = _read_json(run / TRAIN_CONFIG_NAME)
    if meta.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise ValueError(f"{run}: run format {meta['format_version']} is newer than this vqaudio "
                         f"understands ({RUN_FORMAT_VERSION})")
    return config_from_dict(TrainConfig, meta["config"])


def read_run_configs(run_dir: str | os.PathLike) -> tuple[VQVAEConfig, TrainConfig, list[str]]:
    """The model config, train config and speaker table saved in a run directory.

    Raises:
        ValueError: a file is missing or invalid.
    """
    run = Path(run_dir)
    return (config_from_dict(VQVAEConfig, _read_json(run / MODEL_CONFIG_NAME)),
            _read_train_config(run), list(_read_json(run / SPEAKERS_NAME)))


def _check_resumable(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    differ = [f.name for f in dataclasses.fields(TrainConfig)
              if f.name not in RESUMABLE_FIELDS and getattr(saved, f.name) != getattr(given, f.name)]
    if differ:
        detail = ", ".join(f"{n}: saved {getattr(saved, n)!r}, given {getattr(given, n)!r}" for n in differ)
        raise ValueError(f"cannot resume with a different training setup ({detail}); only "
                         f"{', '.join(sorted(RESUMABLE_FIELDS))} may change")
    return given


def _check_same_run(run: Path, model_config: VQVAEConfig, speakers: list[str]) -> None:
    saved_model, _, saved_speakers = read_run_configs(run)
    if saved_speakers != speakers:
        raise ValueError(f"{run}: the corpus's speaker table ({len(speakers)} speakers) differs from "
                         f"the run's ({len(saved_speakers)}); resume with the same data")
    if saved_model != model_config:
        a, b = flat_config(saved_model), flat_config(model_config)
        differ = [f"{k}: saved {a[k]!r}, given {b.get(k)!r}" for k in a if a[k] != b.get(k)]
        raise ValueError(f"{run}: cannot resume with a different model config (differs in "
                         f"{', '.join(differ)})")


def _format_valid(step: int, m: dict[str, float]) -> str:
    return (f"step {step}: valid loss {m['valid/loss']:.4f}, {m['valid/bits_per_sample']:.3f} bits/sample, "
            f"perplexity {m['valid/perplexity']:.1f}, {m['valid/codes_in_use']} codes in use")
