"""Optional third-party packages of ``vqaudio evaluate`` (the ``eval`` extra).

The judges and metrics come from packages that the core of vqaudio does not need; they are
imported only when used, and a missing one raises :class:`MissingExtraError`, whose message
names the package and the extra that installs it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import warnings
from types import ModuleType

#: The command that installs every optional package of the evaluation.
INSTALL_HINT = 'pip install -e ".[eval]"  (or: pip install "vqaudio[eval]")'

#: import name -> (PyPI distribution, what vqaudio uses it for)
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "pesq": ("pesq", "PESQ (ITU-T P.862)"),
    "pystoi": ("pystoi", "STOI / ESTOI"),
    "visqol": ("visqol-python", "ViSQOL v3"),
    "pycodec2": ("pycodec2", "the Codec 2 baselines"),
    "resemblyzer": ("resemblyzer", "the speaker judge (GE2E embeddings)"),
    "webrtcvad": ("webrtcvad", "resemblyzer's voice activity detection"),
    "pocketsphinx": ("pocketsphinx", "the speech recogniser (digit accuracy, WER)"),
}


class MissingExtraError(ImportError):
    """An optional package of the ``eval`` extra is not installed (or cannot be imported).

    Attributes:
        module: the import name that failed (``"pesq"``).
        package: its PyPI distribution (``"pesq"``).
    """

    def __init__(self, module: str, package: str, purpose: str, reason: str = ""):
        self.module = module
        self.package = package
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"{purpose} needs the optional package '{package}', which cannot be imported{detail}. "
            f"Install the evaluation extra: {INSTALL_HINT}"
        )


def require(module: str) -> ModuleType:
    """Import ``module``, one of :data:`OPTIONAL_PACKAGES`, or raise :class:`MissingExtraError`.

    Changes that the import makes to ``os.environ`` are undone.

    Raises:
        MissingExtraError: the package is missing or fails to import (the message names the
            package and ``pip install -e ".[eval]"``).
    """
    package, purpose = OPTIONAL_PACKAGES[module]
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():
            # resemblyzer imports scipy.ndimage.morphology (deprecated since SciPy 1.8), and
            # webrtcvad imports pkg_resources (deprecated by setuptools): nothing a user can fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        reason = str(exc)
        if "pkg_resources" in reason:
            # The original 'webrtcvad' (a dependency of resemblyzer) imports pkg_resources,
            # which setuptools >= 81 no longer ships.
            reason += "; webrtcvad needs setuptools<81 (or: pip install --no-deps webrtcvad-wheels)"
        raise MissingExtraError(module, package, purpose, reason) from None
    finally:
        # Undo environment changes made by the import (visqol sets NUMBA_THREADING_LAYER,
        # which would change the threading of vqaudio's own numba code).
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def available(module: str) -> bool:
    """Whether :func:`require` would succeed for ``module`` (imports it to find out)."""
    try:
        require(module)
    except MissingExtraError:
        return False
    return True


def which(program: str) -> str | None:
    """Path of an executable on ``PATH`` (``opusenc``, ``opusdec``), or None."""
    return shutil.which(program)
