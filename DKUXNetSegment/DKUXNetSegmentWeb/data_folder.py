"""The server's data folder: the only files a web page may read or write.

A page names files by their path relative to the folder. Anything that resolves outside it
(``..``, an absolute path elsewhere, a symbolic link that points out) is refused with
:class:`~dkuxnet.errors.InputError`, whatever the page sends: the browser's choices travel as
plain state that any client can set. Uploads are stored under ``uploads/`` and kept only when
they read as a scalar 3D image; results go under ``segmentations/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from dkuxnet.errors import InputError
from dkuxnet.io import read_volume, strip_volume_suffix, volume_suffix

log = logging.getLogger(__name__)

UPLOADS = "uploads"
SEGMENTATIONS = "segmentations"
#: Fine-tuning runs (their exported data and models); not offered as volumes to load.
RUNS = "dkuxnet-runs"
#: An upload arrives as one file, so formats with a separate data file (.nhdr, .mhd) cannot be
#: uploaded; they can still be read from the data folder.
UPLOAD_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")
#: The listing stops here, so a data folder pointed at a whole disk cannot stall the page.
MAX_LISTED = 2000
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._ -]+")


class DataFolder:
    """Files under one root folder, addressed by relative paths.

    Args:
        root: an existing folder; it is resolved once, so later symbolic-link tricks in the
            path to it change nothing.

    Raises:
        InputError: ``root`` is not an existing folder.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(f"data folder not found: {root}")
        self.root = root.resolve()

    def resolve(self, relative: str | Path) -> Path:
        """The existing file at ``relative`` inside the folder.

        Raises:
            InputError: nothing chosen, a path outside the data folder, or no such file.
        """
        text = str(relative).strip() if relative is not None else ""
        if not text:
            raise InputError("choose a file from the data folder")
        path = (self.root / text).resolve()  # an absolute `text` replaces the root here
        if not path.is_relative_to(self.root):
            raise InputError(f"{text!r} is outside the data folder; choose a file inside it")
        if not path.is_file():
            raise InputError(f"{text!r} is not a file in the data folder")
        return path

    def relative(self, path: Path) -> str:
        """``path`` (inside the folder) as the page shows it: relative, with ``/``."""
        return path.resolve().relative_to(self.root).as_posix()

    def volumes(self) -> list[str]:
        """Image files that can be loaded, as sorted relative paths.

        Hidden folders and :data:`RUNS` are skipped; at most :data:`MAX_LISTED` are listed.
        """
        found: list[str] = []
        for path in self._walk(self.root):
            if volume_suffix(path) is not None:
                if len(found) >= MAX_LISTED:  # one more than fits: say the list is cut
                    log.warning("listing only the first %d images of %s", MAX_LISTED, self.root)
                    break
                found.append(self.relative(path))
        return sorted(found)

    def save_upload(self, name: str, content: bytes) -> Path:
        """Store an uploaded file under ``uploads/`` if it is a readable scalar 3D image.

        Args:
            name: the file name the browser gave (any folders in it are dropped).
            content: the file's bytes.

        Returns:
            The stored file.

        Raises:
            InputError: a format that cannot be uploaded, or a file that does not read as a
                scalar 3D image (it is then not kept); the message names the file and why.
        """
        clean = _safe_file_name(name)
        if not clean.lower().endswith(UPLOAD_SUFFIXES):
            raise InputError(
                f"{name!r} is not a 3D image file this page can read; upload one of "
                f"{', '.join(UPLOAD_SUFFIXES)}"
            )
        if not content:
            raise InputError(f"{name!r} is empty; it is not a readable 3D image")
        path = self.new_path(UPLOADS, clean)
        path.write_bytes(content)
        try:
            read_volume(path, what="upload")
        except InputError as exc:
            path.unlink(missing_ok=True)
            reason = str(exc).replace(str(path), repr(name))
            raise InputError(f"{name!r} is not a readable 3D image: {reason}") from exc
        log.info("stored upload %s (%d bytes)", path, len(content))
        return path

    def new_path(self, folder: str, name: str) -> Path:
        """A path under ``folder`` for a new file called ``name``, numbered if taken."""
        parent = self.root / folder
        parent.mkdir(parents=True, exist_ok=True)
        suffix = volume_suffix(name) or Path(name).suffix
        stem = strip_volume_suffix(name) if volume_suffix(name) else Path(name).stem
        path = parent / name
        number = 1
        while path.exists():
            path = parent / f"{stem}_{number}{suffix}"
            number += 1
        return path

    def _walk(self, folder: Path) -> Iterator[Path]:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name == RUNS:
                continue
            if entry.is_symlink() and not entry.resolve().is_relative_to(self.root):
                continue  # resolve() would refuse it
            if entry.is_dir() and not entry.is_symlink():
                yield from self._walk(entry)
            elif entry.is_file():
                yield entry


def _safe_file_name(name: str) -> str:
    """The last part of ``name`` with unusual characters replaced (never empty)."""
    base = Path(str(name).replace("\\", "/")).name
    clean = _UNSAFE_NAME_CHARACTERS.sub("_", base).strip(" .")
    return clean or "upload"
