"""Options of ``vqaudio train-prior`` and of the recipes' prior stage, mapped onto the configs of
:func:`vqaudio.prior_train.train_prior`.

``vqaudio train-prior TOKENS_DIR --out PRIOR_DIR [--type diffusion]`` takes the same run options
as ``vqaudio train`` (``--max-steps``, ``--learning-rate``, ``--lr-schedule``, ``--valid-every``,
``--checkpoint-every``, ``--log-every``, ``--mixed-precision``, ``--max-minutes``, ``--resume``,
``--overwrite``, ``--device``, ``--log-with``); a recipe's prior stage takes them prefixed
``--prior-`` (:func:`add_prior_recipe_arguments`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from vqaudio.nn.diffusion_prior import DiffusionPriorConfig
from vqaudio.nn.prior import PriorConfig
from vqaudio.config import config_from_dict
from vqaudio.prior_train import (
    PRIOR_TYPES,
    TRAIN_CONFIG_NAME,
    PriorTrainConfig,
    prior_train_config_from_dict,
    train_prior,
)
from vqaudio.train_cli import add_shared_run_options, add_shared_training_options, wants_cpu


#: ``vqaudio train-prior`` option (argparse dest) -> (config, field). Options default to None:
#: "the default" for a new run, "the saved value" when resuming.
PRIOR_OPTIONS: dict[str, tuple[str, str]] = {
    "d_model": ("prior", "d_model"), "layers": ("prior", "n_layers"), "heads": ("prior", "n_heads"),
    "max_len": ("prior", "max_len"), "dropout": ("prior", "dropout"),
    "attention_dropout": ("prior", "attention_dropout"),
    "max_steps": ("train", "max_steps"), "batch_size": ("train", "batch_size"), "window": ("train", "window"),
    "learning_rate": ("train", "learning_rate"), "lr_schedule": ("train", "lr_schedule"),
    "weight_decay": ("train", "weight_decay"),
    "warmup_steps": ("train", "warmup_steps"), "val_fraction": ("train", "val_fraction"),
    "valid_every": ("train", "valid_every"), "checkpoint_every": ("train", "checkpoint_every"),
    "log_every": ("train", "log_every"), "keep_last": ("train", "keep_last"),
    "max_grad_norm": ("train", "max_grad_norm"), "seed": ("train", "seed"),
    "num_workers": ("train", "num_workers"), "mixed_precision": ("train", "mixed_precision"),
    "timesteps": ("prior", "num_timesteps"), "aux_loss_weight": ("train", "aux_loss_weight"),
}


#: Options that only the diffusion prior has.
DIFFUSION_ONLY_OPTIONS = ("timesteps", "aux_loss_weight")


def add_train_prior_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio train-prior TOKENS_DIR --out PRIOR_DIR`` (see :data:`PRIOR_OPTIONS`)."""
    d, t, dd = PriorConfig(), PriorTrainConfig(), DiffusionPriorConfig()
    parser.add_argument("tokens_dir", metavar="TOKENS_DIR", help="folder written by `vqaudio tokenize`")
    parser.add_argument("--out", required=True, metavar="PRIOR_DIR", help="folder of the prior and its checkpoints")
    parser.add_argument("--type", choices=tuple(PRIOR_TYPES), default=None,
                        help="autoregressive: a causal Transformer, one pass per code (default); diffusion: "
                             "VQ-Diffusion's mask-and-replace prior, a fixed number of passes per utterance")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --out, with its saved settings (only "
                             "--max-steps may change; another value of any other option is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the prior run in --out first and start again")
    model = parser.add_argument_group("model")
    model.add_argument("--d-model", type=int, help=f"width (default {d.d_model})")
    model.add_argument("--layers", type=int, help=f"Transformer blocks (default {d.n_layers})")
    model.add_argument("--heads", type=int, help=f"attention heads (default {d.n_heads})")
    model.add_argument("--max-len", type=int, help=f"context in codes (default {d.max_len})")
    model.add_argument("--dropout", type=float, help=f"dropout of the embeddings and residual branches (default {d.dropout})")
    model.add_argument("--attention-dropout", type=float,
                       help=f"dropout of the attention weights (default {d.attention_dropout}; above 0 the "
                            "attention keeps every window x window weight matrix: memory grows with the square of --window)")
    model.add_argument("--timesteps", type=int,
                       help=f"diffusion prior: T, steps of the forward process (default {dd.num_timesteps})")
    run = parser.add_argument_group("training")
    add_shared_training_options(run, t)
    run.add_argument("--batch-size", type=int, help=f"windows per step (default {t.batch_size})")
    run.add_argument("--window", type=int,
                     help="codes per training window (default: 90th percentile of utterance lengths, <= --max-len)")
    run.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {t.weight_decay})")
    run.add_argument("--aux-loss-weight", type=float,
                     help=f"diffusion prior: weight of the clean-code cross-entropy beside the bound "
                          f"(default {t.aux_loss_weight}; the paper's 5e-4 learns far slower in short runs)")
    run.add_argument("--val-fraction", type=float,
                     help=f"utterances held out per speaker (default {t.val_fraction})")
    add_shared_run_options(run)
    run.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                     help="hide the progress bar (--quiet is the same)")


def prior_configs_from_args(args: argparse.Namespace) -> tuple[PriorConfig | DiffusionPriorConfig, PriorTrainConfig]:
    """The configs of ``vqaudio train-prior``: the options given over the defaults (of the
    ``--type`` of prior), or, when resuming a run in ``--out``, over its saved configs.

    Raises:
        ValueError: resuming with an option (other than ``--max-steps``) whose value differs
            from the saved one, or with another ``--type``; a diffusion-only option for the
            autoregressive prior.
    """
    given = {name: getattr(args, name) for name in PRIOR_OPTIONS if getattr(args, name, None) is not None}
    saved_path = Path(args.out) / TRAIN_CONFIG_NAME
    prior_type = getattr(args, "type", None)
    if args.resume and saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        saved_type = saved.get("prior_type", "autoregressive")
        if prior_type not in (None, saved_type):
            raise ValueError(f"{args.out}: cannot resume a {saved_type} prior as --type {prior_type}")
        prior_type = saved_type
        base = {"prior": config_from_dict(PRIOR_TYPES[prior_type][1], saved["prior_config"]),
                "train": prior_train_config_from_dict(saved["train_config"])}
        differ = [f"--{name.replace('_', '-')}: saved {getattr(base[c], f)!r}, given {value!r}"
                  for name, value in given.items() for c, f in [PRIOR_OPTIONS[name]]
                  if name != "max_steps" and getattr(base[c], f) != value]
        if differ:
            raise ValueError(f"{args.out}: cannot resume with other settings ({'; '.join(differ)}); "
                             f"only --max-steps may change")
    else:
        prior_type = prior_type or "autoregressive"
        base = {"prior": PRIOR_TYPES[prior_type][1](), "train": PriorTrainConfig()}
    if prior_type != "diffusion":
        wrong = [f"--{name.replace('_', '-')}" for name in DIFFUSION_ONLY_OPTIONS if name in given]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: only for --type diffusion")
    changes: dict[str, dict[str, Any]] = {"prior": {}, "train": {}}
    for name, value in given.items():
        c, f = PRIOR_OPTIONS[name]
        changes[c][f] = value
    if wants_cpu(args):
        changes["train"]["cpu"] = True
    return (dataclasses.replace(base["prior"], **changes["prior"]),
            dataclasses.replace(base["train"], **changes["train"]))


def run_train_prior(args: argparse.Namespace) -> int:
    """Run ``vqaudio train-prior`` from parsed arguments; returns the exit status (0)."""
    prior_config, train_config = prior_configs_from_args(args)
    train_prior(args.tokens_dir, args.out, prior_config, train_config, resume=args.resume,
                progress=not args.no_progress, max_minutes=args.max_minutes, log_with=args.log_with,
                overwrite=args.overwrite)
    return 0


#: The recipe's prior on a CPU (no GPU, or ``--cpu``): the quickstart's size. The GPU sizes
#: (:class:`PriorConfig` and :class:`PriorTrainConfig` defaults) take about 18 s a step on a
#: 2-core CPU, so 20,000 steps would be some 100 hours.
CPU_PRIOR = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_len": 256, "window": 128,
             "max_steps": 3000, "learning_rate": 1e-3}


def add_prior_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of a recipe's prior stage, prefixed ``--prior-`` so they do not clash with the
    VQ-VAE's (``--prior-max-steps``, ``--prior-d-model``, ...). ``--resume``, ``--cpu`` and
    ``--seed`` are the recipe's own. Sizes left out fit the device the recipe runs on:
    :class:`PriorConfig` / :class:`PriorTrainConfig` defaults on a GPU, :data:`CPU_PRIOR` on a CPU."""
    d, t, c = PriorConfig(), PriorTrainConfig(), CPU_PRIOR

    def both(gpu: Any, cpu: Any) -> str:
        return f"default {gpu} on a GPU, {cpu} on a CPU"

    g = parser.add_argument_group("prior stage")
    g.add_argument("--prior-max-steps", "--prior-steps", type=int,
                   help=f"prior training steps ({both(t.max_steps, c['max_steps'])})")
    g.add_argument("--prior-batch-size", type=int, default=t.batch_size, help=f"default {t.batch_size}")
    g.add_argument("--prior-learning-rate", "--prior-lr", type=float, help=both(t.learning_rate, c["learning_rate"]))
    g.add_argument("--prior-window", type=int,
                   help=f"codes per training window (default on a GPU: see train-prior; {c['window']} on a CPU)")
    g.add_argument("--prior-d-model", type=int, help=both(d.d_model, c["d_model"]))
    g.add_argument("--prior-layers", type=int, help=both(d.n_layers, c["n_layers"]))
    g.add_argument("--prior-heads", type=int, help=both(d.n_heads, c["n_heads"]))
    g.add_argument("--prior-max-len", type=int, help=f"context in codes ({both(d.max_len, c['max_len'])})")
    g.add_argument("--prior-dropout", type=float, default=d.dropout, help=f"default {d.dropout}")
    g.add_argument("--prior-valid-every", "--prior-eval-every", type=int, default=t.valid_every,
                   help=f"default {t.valid_every}")
    g.add_argument("--prior-checkpoint-every", "--prior-save-every", type=int, default=t.checkpoint_every,
                   help=f"default {t.checkpoint_every}")


def prior_configs_from_recipe_args(args: argparse.Namespace) -> tuple[PriorConfig, PriorTrainConfig]:
    """The configs of :func:`train_prior` from :func:`add_prior_recipe_arguments` options (and
    the recipe's ``seed``, ``cpu`` and ``mixed_precision`` if it has them); sizes not given
    are the GPU defaults where a GPU will train the prior, else :data:`CPU_PRIOR`."""
    cpu = wants_cpu(args) or not torch.cuda.is_available()
    d, t = PriorConfig(), PriorTrainConfig()
    base = CPU_PRIOR if cpu else {"d_model": d.d_model, "n_layers": d.n_layers, "n_heads": d.n_heads,
                                  "max_len": d.max_len, "window": None, "max_steps": t.max_steps,
                                  "learning_rate": t.learning_rate}

    def pick(value: Any, key: str) -> Any:
        return base[key] if value is None else value

    prior_config = PriorConfig(
        d_model=pick(args.prior_d_model, "d_model"), n_layers=pick(args.prior_layers, "n_layers"),
        n_heads=pick(args.prior_heads, "n_heads"), max_len=pick(args.prior_max_len, "max_len"),
        dropout=args.prior_dropout,
    )
    train_config = PriorTrainConfig(
        max_steps=pick(args.prior_max_steps, "max_steps"), batch_size=args.prior_batch_size,
        learning_rate=pick(args.prior_learning_rate, "learning_rate"), window=pick(args.prior_window, "window"),
        valid_every=args.prior_valid_every, checkpoint_every=args.prior_checkpoint_every,
        seed=getattr(args, "seed", None) or 0, cpu=wants_cpu(args),
        mixed_precision=getattr(args, "mixed_precision", None) or "auto",
    )
    return prior_config, train_config

