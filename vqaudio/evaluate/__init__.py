"""Evaluation of a checkpoint next to classic codecs: ``vqaudio evaluate``.

- :func:`evaluate`: the whole evaluation (reconstruction, conversion, generation, baselines,
  report); see :mod:`vqaudio.evaluate.pipeline`.
- :mod:`vqaudio.evaluate.metrics`: PESQ, STOI/ESTOI, ViSQOL, log-mel L1, MCD, delay alignment.
- :mod:`vqaudio.evaluate.judges`: speaker embeddings (resemblyzer) and speech recognition
  (pocketsphinx).
- :mod:`vqaudio.evaluate.baselines`: original audio, Codec 2, Opus.
- :mod:`vqaudio.evaluate.report`: report.json, report.md, plots.

The third-party packages are the optional extra ``eval`` (``pip install -e ".[eval]"``); they
are imported only when used, and a missing one raises :class:`MissingExtraError`.
"""

from vqaudio.evaluate.optional import INSTALL_HINT, MissingExtraError
from vqaudio.evaluate.pipeline import SKIPPABLE, EvalClip, evaluate, load_clips

__all__ = ["INSTALL_HINT", "SKIPPABLE", "EvalClip", "MissingExtraError", "evaluate", "load_clips"]
