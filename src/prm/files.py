"""Writing files atomically: a reader (or an interrupted run) never sees half a file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["read_yaml", "write_atomic", "write_text_atomic"]


def write_atomic(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, fsync: bool = False
) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place.

    The temporary file (``.<name>.<pid>-<random>.tmp``, in the same folder so that the
    rename is atomic) is removed on any error, so ``path`` holds either its old content
    or the complete new one. Parent folders are created. Returns ``path``.

    Args:
        path: the file to write.
        write: writes the content into the binary file object it is given.
        fsync: flush the data to disk before the rename (checkpoints: survives a power
            cut too; costs a disk round trip, so not for thousands of cache files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as handle:  # permissions from the umask, like any new file
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
