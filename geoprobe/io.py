"""Safe file output: atomic files and folders, locked output folders, staged replacement.

Files are written to a temporary name in the same folder and renamed into place, so an interrupted job never
leaves a half-written file. Temporary names follow one pattern, ``.<name>.<8 random chars>.tmp`` (plus
``.<name>.old`` while a folder is being replaced), so leftovers of a killed job can be recognised and removed
(:func:`remove_stale_temps`) without touching anything else.

An output folder (``--out``) is handled by :func:`open_output`:

- everything is checked before the disk is touched (:func:`check_output`): ``--out`` must not be, lie inside or
  contain an input; an existing non-empty folder needs ``--resume``/``--overwrite``; ``--overwrite`` replaces
  only a folder geoprobe wrote (it holds the marker file ``.geoprobe``, or is a run/probe/compare folder of an
  older version); an empty folder is used as is;
- one writer at a time: ``fcntl.flock`` on ``<parent>/.<name>.geoprobe-lock``, which holds the owner's pid and
  host for the error message. The kernel drops the lock when its process dies (even by ``kill -9``), so a stale
  lock file never blocks anyone;
- a replacement is built beside the old folder in ``<parent>/.<name>.geoprobe-new`` and swapped in only when
  complete (:meth:`Output.commit`), so the old result survives a failure or an interrupt of the new job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from geoprobe.errors import OutputBusyError, OutputError, OutputExistsError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: marker file written into every output folder geoprobe creates (``--overwrite`` replaces only such folders)
MARKER = ".geoprobe"
LOCK_SUFFIX = ".geoprobe-lock"
NEW_SUFFIX = ".geoprobe-new"
OLD_SUFFIX = ".geoprobe-old"
#: temporary names of :func:`atomic_write` / :func:`atomic_dir` (mkstemp/mkdtemp use 8 chars of [a-z0-9_])
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}(?:\.tmp)?|old)$")


def decode_utf8(data: bytes, where: str | Path, *, error: type[Exception] | None = None) -> str:
    """``data`` as UTF-8 text without a leading byte-order mark; one-line error naming ``where``, the byte
    offset and line of the first undecodable byte, or of the first NUL byte (binary files).

    ``error``: the exception class raised (default :class:`geoprobe.errors.ConfigError`).
    """
    from geoprobe.errors import ConfigError

    err = error or ConfigError
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    nul = data.find(b"\x00")
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start + bom
        if nul < 0 or nul > bad:
            line = data[:bad].count(b"\n") + 1
            raise err(f"{where} is not UTF-8 text: byte 0x{data[bad]:02x} at offset {bad} (line {line}); "
                      "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    if nul >= 0:
        line = data[:nul].count(b"\n") + 1
        raise err(f"{where} is not a text file: NUL byte at offset {nul} (line {line})")
    return text


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary user files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def atomic_dir(final: str | Path, writer: Callable[[Path], None]) -> Path:
    """Build a folder with ``writer(tmp_dir)`` and rename it to ``final`` (replacing an old one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        writer(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_stale_temps(folder: str | Path, names: Callable[[str], bool]) -> list[Path]:
    """Delete leftovers of :func:`atomic_write`/:func:`atomic_dir` in ``folder`` (not recursive) whose target
    name satisfies ``names``; returns what was removed. Call only while holding the folder's lock."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        if m is None or not names(m.group("name")):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    return removed


# ------------------------------------------------------------------------------------------ output folders


def sidecar(path: str | Path, suffix: str) -> Path:
    """``<parent>/.<name><suffix>``: the lock file / staging folder that belongs to output folder ``path``."""
    path = Path(path)
    return path.parent / f".{path.name}{suffix}"


def is_empty_output(path: str | Path) -> bool:
    """True when ``path`` does not exist or is a folder holding nothing but geoprobe's marker."""
    path = Path(path)
    return not path.is_dir() or not any(p.name != MARKER for p in path.iterdir())


def is_geoprobe_output(path: str | Path) -> bool:
    """True when ``path`` is a folder geoprobe wrote: it holds :data:`MARKER`, or it is a wind-tunnel run
    (``manifest.json`` of kind ``geoprobe-...``), a probe result (summary.json + results.csv + report.html) or a
    comparison grid (cells.csv + verdicts.json) written before the marker existed."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    manifest = path / "manifest.json"
    if manifest.is_file():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(manifest.read_text())
            if isinstance(data, dict) and str(data.get("kind", "")).startswith("geoprobe"):
                return True
    if all((path / f).is_file() for f in ("summary.json", "results.csv", "report.html")):
        return True
    return all((path / f).is_file() for f in ("cells.csv", "verdicts.json"))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path: str | Path, *, inputs: Iterable[str | Path | None] = (), resume: bool = False,
                 overwrite: bool = False, accumulate: bool = False, resume_hint: bool = True) -> Path:
    """Validate output folder ``path`` without writing anything; return it as a :class:`Path`.

    Refuses (one line each): a path that is a file; ``path`` equal to, inside or containing an existing input;
    a read-only location; an existing non-empty folder without ``resume``/``overwrite``/``accumulate``;
    ``overwrite`` or ``accumulate`` of a non-empty folder geoprobe did not write (:func:`is_geoprobe_output`).
    ``resume_hint`` mentions ``--resume`` in the "already holds results" message (only commands that have it).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a folder")
    here = path.resolve()
    for inp in inputs:
        if inp is None or not Path(inp).exists():
            continue
        there = Path(inp).resolve()
        if here == there:
            raise OutputError(f"--out {path} is the input {inp} itself; choose another output folder")
        if there in here.parents:
            raise OutputError(f"--out {path} lies inside the input {inp}; choose an output folder outside it")
        if here in there.parents:
            raise OutputError(f"--out {path} contains the input {inp}; choose an output folder that does not")
    for folder in {_nearest_existing(path.parent), _nearest_existing(path)}:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to --out {path}: {folder} is not writable")
    if is_empty_output(path):
        return path
    OutputLock(path).raise_if_held()  # a job running there is a better explanation than "holds results"
    if (overwrite or accumulate) and not is_geoprobe_output(path):
        raise OutputExistsError(
            f"refusing to {'replace' if overwrite else 'write into'} {path}: it holds files geoprobe did not "
            f"write (no {MARKER} marker); choose another --out or empty that folder yourself")
    if not (resume or overwrite or accumulate):
        choices = "pass --resume to continue it or --overwrite to replace it" if resume_hint else \
            "pass --overwrite to replace it or choose another --out"
        raise OutputExistsError(f"output folder {path} already holds results; {choices}")
    return path


def _oserror_line(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write to {path}: {reason} (errno {errno.errorcode.get(exc.errno, exc.errno)})")


class OutputLock:
    """Exclusive lock on output folder ``path`` (see the module docstring); one holder per folder."""

    _held: dict[Path, OutputLock] = {}

    def __init__(self, path: str | Path, *, advice: str = "wait for it to finish or choose another --out") -> None:
        self.folder = Path(path)
        self.path = sidecar(path, LOCK_SUFFIX)
        self.fd: int | None = None
        self.advice = advice

    def holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}, since {info['since']}"
        return "a process that has not written its pid yet"

    def _busy(self) -> OutputBusyError:
        return OutputBusyError(f"output folder {self.folder} is in use by another geoprobe job ({self.holder()}); "
                               f"{self.advice}")

    def raise_if_held(self) -> None:
        """Raise :class:`OutputBusyError` if another process holds the lock now (creates nothing)."""
        if self.path.resolve() in OutputLock._held:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy() from None
        finally:
            os.close(fd)

    def acquire(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise self._busy() from None
                try:  # the previous holder may have unlinked the file between our open and flock: retry
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        except OSError as exc:
            raise _oserror_line(self.folder, exc) from None
        self.fd = fd
        OutputLock._held[self.path.resolve()] = self
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: a waiter that opened it retries (inode check)
        os.close(self.fd)
        self.fd = None
        OutputLock._held.pop(self.path.resolve(), None)

    @classmethod
    def release_all(cls) -> None:
        """Release every lock this process still holds (the CLI calls this when a command ends)."""
        for lock in list(cls._held.values()):
            lock.release()


def mark(folder: Path, kind: str) -> None:
    """Write the marker that makes ``folder`` recognisably geoprobe's (see :func:`is_geoprobe_output`)."""
    (folder / MARKER).write_text(f"geoprobe output ({kind}); --overwrite may replace this folder\n")


def pending_replacement(path: str | Path) -> Path | None:
    """The staging folder of an interrupted replacement of ``path`` (``--overwrite``), if one is left."""
    staging = sidecar(path, NEW_SUFFIX)
    return staging if (staging / MARKER).is_file() else None


def _recover_swap(final: Path) -> None:
    """Finish or undo a swap that a killed process left half done (old result moved aside)."""
    old = sidecar(final, OLD_SUFFIX)
    if not old.exists():
        return
    if final.exists():
        shutil.rmtree(old)
    else:
        os.replace(old, final)


def _swap_in(staging: Path, final: Path) -> None:
    old = sidecar(final, OLD_SUFFIX)
    if final.exists() and is_empty_output(final):
        shutil.rmtree(final)
    if final.exists():
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)


class Output:
    """A locked output folder. Write into :attr:`work`; :meth:`commit` makes it the result at :attr:`final`.

    :attr:`work` is :attr:`final` itself (a new folder, or one being resumed in place) or the staging folder
    ``.<name>.geoprobe-new`` beside it (a replacement, or a result that must appear complete or not at all).
    """

    _open: list[Output] = []

    def __init__(self, final: Path, work: Path, lock: OutputLock, *, created: bool, discard_work: bool) -> None:
        self.final, self.work, self.lock = final, work, lock
        #: True when this job created (or emptied) :attr:`work`; False when it continues an existing one
        self.created = created
        self._discard_work = discard_work
        Output._open.append(self)

    @property
    def staged(self) -> bool:
        return self.work != self.final

    def commit(self, writer: Callable[[Path], None] | None = None) -> Path:
        """Run ``writer(work)`` (if given), swap a staged result in, release the lock; return :attr:`final`.

        On any failure the previous content of :attr:`final` is left as it was; an OS error (disk full,
        read-only) becomes one line.
        """
        try:
            if writer is not None:
                writer(self.work)
            if self.staged:
                _swap_in(self.work, self.final)
        except OSError as exc:
            raise OutputError(f"could not write {self.final}: {exc.strerror or exc}; nothing was replaced") from None
        finally:
            self.close()
        return self.final

    def close(self) -> None:
        """Release the lock; an uncommitted staging folder of a one-shot result is deleted."""
        if self._discard_work and self.staged and self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)
        self.lock.release()
        if self in Output._open:
            Output._open.remove(self)

    @classmethod
    def close_all(cls) -> None:
        """Close every output this process still has open (the CLI calls this when a command ends)."""
        for output in list(cls._open):
            output.close()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_output(path: str | Path, *, kind: str, inputs: Iterable[str | Path | None] = (), resume: bool = False,
                overwrite: bool = False, accumulate: bool = False, staged: bool = False,
                resumable: bool = False, resume_hint: bool = True) -> Output:
    """Validate (:func:`check_output`), lock and prepare output folder ``path``.

    - ``staged=True`` (one-shot results such as ``probe``): the result is built in a fresh staging folder and
      appears at ``path`` complete or not at all; an uncommitted staging folder is deleted on :meth:`Output.close`.
    - otherwise (training runs): a new or empty folder is written in place; ``overwrite`` of a non-empty folder
      builds the replacement in the staging folder, which is kept if the job stops early, and ``resume``
      continues such a pending replacement when there is one (else the folder itself).
    - ``staged=True, resumable=True`` (one-shot results built in stages, such as ``scan``): as ``staged``, but
      the staging folder is kept when the job stops early, and ``resume`` continues it (``Output.created`` is
      False then); without ``resume`` a left-over staging folder is replaced by a fresh one.
    - ``accumulate``: an existing geoprobe folder is written into (comparison grids).
    """
    inputs = list(inputs)
    path = check_output(path, inputs=inputs, resume=resume, overwrite=overwrite, accumulate=accumulate,
                        resume_hint=resume_hint)
    lock = OutputLock(path).acquire()
    try:
        check_output(path, inputs=inputs, resume=resume, overwrite=overwrite, accumulate=accumulate,
                     resume_hint=resume_hint)  # again, now that no other writer can change it
        _recover_swap(path)
        staging = sidecar(path, NEW_SUFFIX)
        pending = pending_replacement(path)
        if resume and (resumable or not staged) and pending is not None:
            return Output(path, pending, lock, created=False, discard_work=False)
        if staged or (overwrite and not is_empty_output(path)):
            if pending is not None:
                shutil.rmtree(pending)  # our own leftover of an earlier interrupted job
            staging.mkdir()
            mark(staging, kind)
            return Output(path, staging, lock, created=True, discard_work=staged and not resumable)
        created = is_empty_output(path)
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MARKER).exists():
            mark(path, kind)
        return Output(path, path, lock, created=created, discard_work=False)
    except OSError as exc:
        lock.release()
        raise _oserror_line(path, exc) from None
    except BaseException:
        lock.release()
        raise

