"""Options of ``vqaudio train`` and of the recipes' VQ-VAE stage, mapped onto the configs of
:func:`vqaudio.train.train`.

The options map one to one onto the fields of :class:`vqaudio.config.VQVAEConfig` (model sizes,
:func:`add_model_arguments`) and :class:`vqaudio.train.TrainConfig` (how to train,
:func:`add_train_config_arguments`); an option left out means the default for a new run, the
saved value when resuming, and the checkpoint's model with ``--init-from``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

from vqaudio._system import MIXED_PRECISION
from vqaudio.config import VQVAEConfig
from vqaudio.runs import LR_SCHEDULES, METRICS_NAME
from vqaudio.train import (
    EXAMPLES_DIR,
    MODEL_SIZE_FIELDS,
    TRAIN_CONFIG_NAME,
    TrainConfig,
    TrainResult,
    build_model_config,
    read_run_configs,
    train,
)


def add_model_arguments(parser: argparse.ArgumentParser, defaults: VQVAEConfig | None = None) -> None:
    """Model-size options (mapped by :func:`model_config_from_args` onto :class:`VQVAEConfig`).

    Every option defaults to ``None``: "``defaults``' value" (``VQVAEConfig()`` if not given)
    for a new run and "the saved value" when resuming.
    """
    d = defaults or VQVAEConfig()
    g = parser.add_argument_group("model")
    g.add_argument("--sample-rate", type=int, help=f"model rate in Hz (default {d.sample_rate})")
    g.add_argument("--encoder-channels", type=_int_list,
                   help=f"widths of the stride-2 encoder layers, comma separated; their number sets "
                        f"the hop 2**n (default {','.join(map(str, d.encoder.channels))})")
    g.add_argument("--causal-encoder", action="store_const", const=True,
                   help="pad the encoder's convolutions on the left only, so a code depends on no sample after "
                        "its hop (a streaming encoder; default: centred padding)")
    g.add_argument("--gain-jitter", type=float, metavar="DB",
                   help=f"in training, scale what the encoder sees by a random gain within +-DB dB (the "
                        f"decoder's targets keep their level), so the codes need not carry the level and a "
                        f"conversion takes the target speaker's; 0 = off (default {d.encoder.gain_jitter_db})")
    g.add_argument("--codebook-size", type=int, help=f"K, codes in the codebook (default {d.quantizer.codebook_size})")
    g.add_argument("--code-dim", type=int, help=f"D, size of a code vector (default {d.quantizer.dim})")
    g.add_argument("--commitment-cost", type=float,
                   help=f"beta, weight of the commitment loss (default {d.quantizer.commitment_cost})")
    g.add_argument("--no-ema", dest="ema", action="store_const", const=False,
                   help="learn the codebook with the codebook loss instead of EMA updates")
    g.add_argument("--ema-decay", type=float, help=f"EMA decay gamma (default {d.quantizer.decay})")
    g.add_argument("--dead-code-threshold", type=float,
                   help=f"restart codes whose EMA usage (assignments per batch) falls below this; "
                        f"0 = never (default {d.quantizer.dead_code_threshold})")
    g.add_argument("--num-stacks", type=int, help=f"WaveNet dilation cycles (default {d.decoder.num_stacks})")
    g.add_argument("--layers-per-stack", type=int,
                   help=f"WaveNet layers per cycle, dilations 1..2**(n-1) (default {d.decoder.layers_per_stack})")
    g.add_argument("--residual-channels", type=int, help=f"default {d.decoder.residual_channels}")
    g.add_argument("--gate-channels", type=int, help=f"default {d.decoder.gate_channels}")
    g.add_argument("--skip-channels", type=int, help=f"default {d.decoder.skip_channels}")
    g.add_argument("--speaker-channels", type=int,
                   help=f"speaker embedding width, 0 disables it (default {d.decoder.speaker_channels})")
    g.add_argument("--condition-layers", type=int,
                   help=f"residual conv blocks (kernel 3 across code frames) between the codes and the WaveNet "
                        f"(default {d.decoder.condition_layers})")
    g.add_argument("--condition-channels", type=int,
                   help=f"hidden width of those blocks (default {d.decoder.condition_channels})")
    g.add_argument("--mel-loss-weight", type=float,
                   help=f"weight of the auxiliary L1 loss on the log-mel spectrogram predicted from each code "
                        f"frame's conditioning, 0 = off (default {d.decoder.mel_loss_weight})")
    g.add_argument("--mel-bands", type=int, help=f"bands of that log-mel spectrogram (default {d.decoder.mel_bands})")
    g.add_argument("--time-jitter", type=float,
                   help=f"probability that, in training, a code frame the decoder sees is replaced by a neighbour "
                        f"(Chorowski et al. 2019; 0.12 there), 0 = off (default {d.decoder.time_jitter})")
    g.add_argument("--input-noise", type=float,
                   help=f"std of Gaussian noise added, in training, to the decoder's teacher-forced past samples "
                        f"(linear amplitude; targets stay clean), 0 = off (default {d.decoder.input_noise})")
    g.add_argument("--pre-emphasis", type=float, metavar="A",
                   help=f"the WaveNet models the mu-law of x_t - A x_(t-1) and decoding de-emphasises "
                        f"(LPCNet: 0.85), 0 = off (default {d.decoder.pre_emphasis})")
    g.add_argument("--lpc-order", type=int, metavar="P",
                   help=f"linear prediction of order P inside the decoder (LPCNet): the WaveNet models the "
                        f"excitation; needs --mel-loss-weight > 0 (the envelope comes from the mel head); "
                        f"e.g. 16 at 16 kHz, 10-12 at 8 kHz; 0 = off (default {d.decoder.lpc_order})")
    g.add_argument("--speaker-adversary", type=float, metavar="W",
                   help=f"a per-frame speaker classifier on the encoder output behind a gradient reversal "
                        f"scaled by W, to keep the speaker out of the codes; 0 = off (default "
                        f"{d.decoder.speaker_adversary})")
    parser.set_defaults(_model_defaults=d)


def add_shared_training_options(group: argparse._ArgumentGroup, defaults: Any, valid_off: bool = False) -> None:
    """The training options of both trainers, with the same names, meanings and config fields
    (``vqaudio train``: :class:`vqaudio.train.TrainConfig`; ``vqaudio train-prior``:
    :class:`vqaudio.prior_train.PriorTrainConfig`, whose ``defaults`` fill the help texts):
    ``--max-steps``, ``--learning-rate`` (``--lr``), ``--warmup-steps``, ``--lr-schedule``,
    ``--max-grad-norm``, ``--checkpoint-every`` (``--save-every``), ``--valid-every``
    (``--eval-every``; ``valid_off``: 0 turns validation off), ``--log-every``, ``--keep-last``,
    ``--mixed-precision``, ``--seed``, ``--num-workers``. They default to None: "the default"
    for a new run, "the saved value" when resuming."""
    d, g = defaults, group
    g.add_argument("--max-steps", type=int, help=f"optimizer steps in total (default {d.max_steps})")
    g.add_argument("--learning-rate", "--lr", type=float, help=f"peak learning rate (default {d.learning_rate})")
    g.add_argument("--warmup-steps", type=int,
                   help=f"linear learning-rate warm-up over the run's first steps (default {d.warmup_steps})")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help=f"after the warm-up: constant, or cosine decay to 10%% at --max-steps (default {d.lr_schedule})")
    g.add_argument("--max-grad-norm", type=float, help=f"gradient clipping norm, 0 = off (default {d.max_grad_norm})")
    g.add_argument("--checkpoint-every", "--save-every", type=int,
                   help=f"steps between checkpoints (default {d.checkpoint_every})")
    g.add_argument("--valid-every", "--eval-every", type=int,
                   help=f"steps between validations{', 0 = off' if valid_off else ''} (default {d.valid_every})")
    g.add_argument("--log-every", type=int, help=f"steps between metrics.jsonl lines (default {d.log_every})")
    g.add_argument("--keep-last", type=int, help=f"checkpoints kept (default {d.keep_last})")
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                   help=f"auto: bf16 where the CPU (AVX512-BF16, AMX) or GPU runs it natively, else fp32 "
                        f"(no); default {d.mixed_precision}")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g.add_argument("--num-workers", type=int, help=f"DataLoader workers (default {d.num_workers})")


def add_shared_run_options(group: argparse._ArgumentGroup) -> None:
    """The run options of both trainers: ``--max-minutes``, ``--device`` (``--cpu``), ``--log-with``."""
    g = group
    g.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop cleanly after M minutes of wall time, with a checkpoint (SIGTERM or Ctrl-C "
                        "stops the same way); --resume continues")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default auto: the GPU if any, else the CPU; several GPUs: "
                        "accelerate launch)")
    g.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="the same as --device cpu")
    g.add_argument("--log-with", action="append", default=[],
                   help="also log to this Accelerate tracker (tensorboard, wandb, ...); repeatable")


def add_train_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """:class:`TrainConfig` options (mapped by :func:`train_config_from_args`); defaults ``None``
    mean "``defaults``' value" for a new run and "the saved value" when resuming."""
    d = defaults or TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--batch-size", type=int, help=f"segments per step and process (default {d.batch_size})")
    g.add_argument("--segment-seconds", type=float,
                   help=f"training segment length, rounded to whole hops (default {d.segment_seconds})")
    add_shared_training_options(g, d, valid_off=True)
    g.add_argument("--gradient-accumulation-steps", type=int,
                   help=f"micro-batches per step (default {d.gradient_accumulation_steps})")
    g.add_argument("--num-valid-per-speaker", type=int,
                   help=f"held-out utterances per speaker (default {d.num_valid_per_speaker})")
    g.add_argument("--example-seconds", type=float,
                   help=f"length of the example decoded at each checkpoint (default {d.example_seconds})")
    g.add_argument("--no-preload", dest="preload", action="store_const", const=False,
                   help="read audio files per item instead of loading the corpus into memory first")
    parser.set_defaults(_train_defaults=d)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``vqaudio train`` and the recipes: run directory and devices."""
    g = parser.add_argument_group("run")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (starts it if there is none)")
    g.add_argument("--overwrite", action="store_true", help="delete the previous run in --out first")
    g.add_argument("--mic", choices=("mic1", "mic2"), help="VCTK 0.92 microphone (default mic1; the run's when resuming)")
    g.add_argument("--split", dest="split_method",
                   choices=("auto", "official", "parallel", "per-speaker"),
                   help="train/validation split (default auto: FSDD's official test takes, "
                        "parallel sentences, or the last utterances of each speaker; the run's when resuming)")
    g.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start a new run from this VQ-VAE's weights (directory, run or bundled name such as "
                        "fsdd-8k; its model config is used, the optimizer starts afresh: see --warmup-steps)")
    add_shared_run_options(g)
    g.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bars (--quiet is the same, as in every command)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio train DATA --out RUN``."""
    parser.add_argument("data", nargs="+",
                        help="corpus folder (VCTK 0.80/0.92, {speaker}/*.wav folders, FSDD recordings) "
                             "or audio files")
    parser.add_argument("--out", required=True, help="run directory (see vqaudio.train)")
    add_run_arguments(parser)
    add_model_arguments(parser)
    add_train_config_arguments(parser)


def model_config_from_args(args: argparse.Namespace, base: VQVAEConfig | None = None) -> VQVAEConfig:
    """The model config: ``base`` (or the parser's defaults) changed by the model options given
    on the command line."""
    if base is None:
        base = getattr(args, "_model_defaults", None) or VQVAEConfig()
    sizes = {name: getattr(args, name, None) for name in MODEL_SIZE_FIELDS if name != "num_speakers"}
    return build_model_config(base, **sizes)


def train_config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The train config: ``base`` (or the parser's defaults) changed by the options given."""
    base = base or getattr(args, "_train_defaults", None) or TrainConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given)


def configs_from_args(args: argparse.Namespace, out: str | os.PathLike) -> tuple[VQVAEConfig, TrainConfig]:
    """Model and train configs for a run: the saved ones when resuming ``out`` (changed by the
    options given), else the defaults changed by the options given."""
    run = Path(out)
    if getattr(args, "resume", False) and (run / TRAIN_CONFIG_NAME).is_file():
        saved_model, saved_train, _ = read_run_configs(run)
        return model_config_from_args(args, saved_model), train_config_from_args(args, saved_train)
    init_from = getattr(args, "init_from", None)
    if init_from is not None:  # the checkpoint's model, changed by the options given
        from vqaudio.model import VQVAE

        return model_config_from_args(args, VQVAE.from_pretrained(init_from).config), train_config_from_args(args)
    return model_config_from_args(args), train_config_from_args(args)


def run_train(args: argparse.Namespace) -> int:
    """Run ``vqaudio train`` from parsed arguments and print its summary; returns 0."""
    train_from_args(args)
    return 0


def train_from_args(args: argparse.Namespace) -> TrainResult:
    """:func:`train` with the options of :func:`add_train_arguments` (``vqaudio train`` and the
    recipes' training stage); prints the summary and returns the result."""
    data = args.data
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    model_config, train_config = configs_from_args(args, args.out)
    result = train(
        data, args.out, model_config, train_config, mic=args.mic, split_method=args.split_method,
        resume=args.resume, overwrite=args.overwrite, cpu=wants_cpu(args), log_with=args.log_with,
        progress=not args.no_progress, init_from=getattr(args, "init_from", None),
        max_minutes=getattr(args, "max_minutes", None),
    )
    _print_summary(result)
    return result


def wants_cpu(args: argparse.Namespace) -> bool:
    """Whether the options ask to train on the CPU (``--device cpu`` or its alias ``--cpu``).

    Raises:
        ValueError: ``--device cuda`` without a GPU.
    """
    device = getattr(args, "device", None) or "auto"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no GPU is available")
    return device == "cpu"


def _print_summary(result: TrainResult) -> None:
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    parts = [f"trained {result.step} steps in {result.wall_seconds / 60:.1f} min"]
    if result.train_loss is not None:
        parts.append(f"train loss {result.train_loss:.4f}")
    if result.valid_loss is not None:
        parts.append(f"valid loss {result.valid_loss:.4f}")
    print(", ".join(parts))
    print(f"model: {result.model_dir} (use --checkpoint {result.run_dir})")
    print(f"metrics: {result.run_dir / METRICS_NAME}; examples: {result.run_dir / EXAMPLES_DIR}")
    sys.stdout.flush()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values

