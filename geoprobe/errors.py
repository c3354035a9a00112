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


class OutputExistsError(GeoprobeError):
    """An output directory that already holds results, without --resume/--overwrite."""
