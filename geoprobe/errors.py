"""Exceptions that speak the user's language.

Every error geoprobe raises on purpose derives from :class:`GeoprobeError`; the CLI prints its message as one
line and exits non-zero, so messages must name the problem and, where there is a choice, the valid choices.
"""

from __future__ import annotations


class GeoprobeError(Exception):
    """Base class for errors reported to the user as one clear line (CLI exit code 2)."""


class UnknownNameError(GeoprobeError, KeyError):
    """A name (task, architecture, preset, probe, backend, ...) that no registry knows."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(GeoprobeError, ValueError):
    """Impossible or inconsistent parameters (e.g. L > V without replacement)."""


class CheckpointError(GeoprobeError):
    """A run directory or checkpoint that is missing, corrupted or does not match its manifest."""


class OutputError(GeoprobeError):
    """An output folder that cannot be used as asked (an input, read-only, not geoprobe's, disk full)."""


class OutputExistsError(OutputError):
    """An output directory that already holds results, without --resume/--overwrite."""


class OutputBusyError(OutputError):
    """An output folder that another running geoprobe job holds (its lock names the holder)."""


class TrainingDivergedError(GeoprobeError):
    """Training produced a non-finite loss or gradient; the last good checkpoint and trainer state are kept."""


class JobInterrupted(BaseException):  # noqa: N818 - not an error: the CLI exits 128 + signal number
    """A long job stopped on SIGINT/SIGTERM, its finished work saved (see :mod:`geoprobe.interrupts`).

    A :class:`BaseException`, like :class:`KeyboardInterrupt`: it can be raised at any instant, and
    ``except Exception`` handlers on the way (e.g. a loader turning failures into "cannot read the model") must
    not turn the interruption into an error. The message says what was kept; ``continue_with`` how to go on:
    ``"resume"`` (the same command with ``--resume``), ``"same"`` (the same command again: finished parts are
    reused) or None (nothing was kept; start again)."""

    #: True when the message itself already says how to continue (the CLI then adds no command line)
    says_how_to_continue = False

    def __init__(self, signum: int, message: str, continue_with: str | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.continue_with = continue_with

    @property
    def body(self) -> str:
        """The message without its leading ``"<SIGNAL> received: "``."""
        head, sep, rest = str(self).partition(" received: ")
        return rest if sep and head.startswith("SIG") else str(self)


class TrainingInterrupted(JobInterrupted):
    """Training stopped on SIGINT/SIGTERM after saving a consistent trainer state (continue with --resume)."""

    says_how_to_continue = True

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(signum, message, "resume")


class ModelLoadError(GeoprobeError):
    """A model that cannot be loaded (missing, unreadable, unsupported)."""


class ModelNotFoundError(ModelLoadError):
    """No local folder/file of that name and no Hugging Face repository (or revision) of that id."""


class OfflineModelError(ModelLoadError):
    """A hub model that is not in the local cache while offline (``HF_HUB_OFFLINE=1`` or no network)."""


class GatedModelError(ModelLoadError):
    """A gated or private hub model that needs an access token / accepted licence."""


class UnsupportedModelError(ModelLoadError):
    """An architecture this backend cannot hook (or a run folder with a non-HF architecture)."""


class SiteError(GeoprobeError, ValueError):
    """An unknown activation site, a site the model does not have, or a layer out of range."""
