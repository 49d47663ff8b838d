"""Writing files atomically: a reader (or an interrupted run) never sees half a file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

__all__ = ["AtomicFile", "read_yaml", "write_atomic", "write_text_atomic"]


class AtomicFile:
    """A file written under a temporary name next to ``path``, renamed into place at the end.

    The temporary file (``.<name>.<pid>-<random>.tmp``, in the same folder so that the
    rename is atomic) is opened at once (``handle``); :meth:`commit` renames it to
    ``path`` (or another name), :meth:`discard` removes it. Parent folders are created.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "xb"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.path.with_name(f".{self.path.name}.{unique}.tmp")
        self.handle: IO = open(self.tmp, mode)  # noqa: SIM115 - closed by commit/discard

    def commit(self, target: str | os.PathLike | None = None, *, fsync: bool = False) -> Path:
        """Close the file and rename it to ``target`` (default: ``path``); returns that.

        Args:
            fsync: flush the data to disk before the rename (checkpoints: survives a power
                cut too; costs a disk round trip, so not for thousands of cache files).
        """
        if fsync:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        self.handle.close()
        target = Path(target) if target is not None else self.path
        os.replace(self.tmp, target)
        return target

    def discard(self) -> None:
        """Close and delete the temporary file (``path`` keeps its old content)."""
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def write_atomic(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, fsync: bool = False
) -> Path:
    """Call ``write(file)`` on an :class:`AtomicFile` for ``path`` and commit it.

    The temporary file is removed on any error, so ``path`` holds either its old content
    or the complete new one. Parent folders are created. Returns ``path``.

    Args:
        path: the file to write.
        write: writes the content into the binary file object it is given.
        fsync: see :meth:`AtomicFile.commit`.
    """
    file = AtomicFile(path)  # permissions from the umask, like any new file
    try:
        write(file.handle)
        return file.commit(fsync=fsync)
    except BaseException:
        file.discard()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` for a UTF-8 text file."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def read_yaml(path: str | os.PathLike, what: str = "file") -> Any:
    """The data of a YAML file (``None`` for an empty one).

    Raises:
        FileNotFoundError: naming ``what`` and the path.
        ValueError: the file is not valid YAML.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
