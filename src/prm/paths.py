"""Safe output names for image ids: nothing a dataset says may write outside a folder.

Image ids come from the data (CSV ``file`` columns, json ``file_name`` entries, file
stems) and can be anything: ``../outside``, ``/home/me/photo``, ``a\\b``, names with
characters a file system refuses, or names longer than it allows. Every output that is
named from an image id (overlay PNGs, proposal cache files, reading ``<id>.npz`` from a
folder) goes through :func:`safe_relative_name`, which maps an id to a relative path
that cannot leave the folder it is joined to, and :func:`output_path`, which joins it,
checks it and creates its parent folders.

Ids that are already safe map to themselves (``2007_000032`` -> ``2007_000032``,
``beach/0001`` -> ``beach/0001``); any other id gets its unsafe characters replaced and
the CRC-32 of the original id appended, so that two distinct ids never share a name.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path, PurePosixPath

__all__ = ["safe_relative_name", "output_path"]

# The flat rule (one file name, no folders) is the proposal cache's since its first
# version; keep it byte for byte so that existing caches are found again.
_FLAT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# In folder mode, spaces and a few harmless punctuation marks stay (``sub dir/pic one``
# is a normal photo name); control characters and what Windows forbids do not.
_PART_UNSAFE = re.compile(r"[^\w .,()+=@~&'#-]+")
_MAX_PART = 120  # characters; file systems allow 255 bytes, with room for suffix and CRC


def _crc(image_id: str) -> str:
    return f"{zlib.crc32(image_id.encode('utf-8', 'surrogatepass')):08x}"


def _part(part: str) -> str:
    part = _PART_UNSAFE.sub("_", part).lstrip(".").rstrip(". ")  # no hidden, '..', 'a.'
    return part[:_MAX_PART] or "_"


def safe_relative_name(image_id, suffix: str = "", *, keep_folders: bool = True) -> str:
    """A relative file name for an image id that cannot escape the folder it joins.

    Args:
        image_id: any id (``str``, or an int for COCO).
        suffix: appended to the name, e.g. ``".png"``.
        keep_folders: keep ``/``-separated folders of the id (``sub dir/pic one`` ->
            ``sub dir/pic one``; the caller creates them, see :func:`output_path`). Off:
            one flat file name of ``[A-Za-z0-9._-]`` (the proposal cache's names).

    Returns:
        A POSIX relative path (``str``) without ``..``, without a leading ``/`` or ``.``,
        and without characters outside the allowed set. An id that had to be changed
        ends in ``-<crc32 of the id>`` (before ``suffix``), so distinct ids stay distinct.
    """
    image_id = str(image_id)
    if not keep_folders:
        safe = _FLAT_UNSAFE.sub("_", image_id).lstrip(".") or "_"
        if len(safe) > _MAX_PART:
            safe = safe[:_MAX_PART]
        if safe != image_id:
            safe = f"{safe}-{_crc(image_id)}"
        return safe + suffix
    # Both separators split (a Windows path in a CSV); empty and '.' parts are dropped.
    parts = [p for p in re.split(r"[\\/]+", image_id) if p not in ("", ".")]
    safe = str(PurePosixPath(*[_part(p) for p in parts])) if parts else "_"
    if safe != image_id:
        safe = f"{safe}-{_crc(image_id)}"
    return safe + suffix


def output_path(
    folder: str | os.PathLike,
    image_id,
    suffix: str = "",
    *,
    keep_folders: bool = True,
    inputs: set[Path] | None = None,
) -> Path:
    """Where an output named from an image id goes: inside ``folder``, parents created.

    Args:
        folder: the output folder.
        image_id, suffix, keep_folders: see :func:`safe_relative_name`.
        inputs: resolved paths of input files that must never be written over (the
            images being read): a name that resolves to one raises ``ValueError``.

    Returns:
        ``folder / safe_relative_name(image_id, suffix)``, its parent folders created.

    Raises:
        ValueError: the name would resolve outside ``folder`` (a symbolic link inside it
            pointing out) or onto one of ``inputs``.
    """
    folder = Path(folder)
    path = folder / safe_relative_name(image_id, suffix, keep_folders=keep_folders)
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved, root = path.resolve(), folder.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"output for image {image_id!r} would leave {folder} ({resolved})")
    if inputs and resolved in inputs:
        raise ValueError(f"output for image {image_id!r} would overwrite the input {resolved}")
    return path
