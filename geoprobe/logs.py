"""Logging for geoprobe: the library logs through ``logging.getLogger("geoprobe")`` (silent unless the
application configures logging; the CLI's ``--verbose`` does) and never changes other libraries' global
settings for longer than one call.

:func:`quiet_libraries` silences transformers' info messages and progress bars and TransformerLens's logger
for the duration of a ``with`` block (or a decorated function) and restores the caller's settings afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger("geoprobe")
logger.addHandler(logging.NullHandler())


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: transformers at ERROR verbosity with progress bars off, the ``transformer_lens``
    logger at ERROR. The previous verbosity, progress-bar state and logger level are restored on exit."""
    tf_logging = None
    try:
        import transformers.utils.logging as tf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    tl = logging.getLogger("transformer_lens")
    old_tl = tl.level
    if tf_logging is not None:
        old_verbosity = tf_logging.get_verbosity()
        old_bars = tf_logging.is_progress_bar_enabled()
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    tl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tl.setLevel(old_tl)
        if tf_logging is not None:
            tf_logging.set_verbosity(old_verbosity)
            if old_bars:
                tf_logging.enable_progress_bar()
            else:
                tf_logging.disable_progress_bar()


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (not at the time of creation)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_cli_logging(verbose: bool) -> None:
    """CLI only: show geoprobe's own messages (INFO with ``verbose``, else WARNING) on stderr."""
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("geoprobe: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
