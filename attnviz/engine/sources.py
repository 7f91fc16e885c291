"""Where the images come from: a local folder or any folder pyarrow's filesystems read (URIs).

Every non-hidden file under the folder is listed, recursively, in sorted order;
a file that is not an image is read too and reported as a bad file by the worker.
A labelled folder holds one subfolder per class: a file's label is its first
subfolder's name (None for files directly in the folder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

import pyarrow.fs as pafs

from ..errors import UsageError


def is_uri(text: str) -> bool:
    return "://" in str(text)


@dataclass(frozen=True)
class Source:
    """A folder of images on some filesystem. ``root`` is what the user gave (a URI or a local path)."""

    root: str

    @property
    def fs(self) -> pafs.FileSystem:
        return self._parts()[0]

    @property
    def base(self) -> str:
        """The folder's path inside :attr:`fs`."""
        return self._parts()[1]

    def _parts(self) -> tuple[pafs.FileSystem, str]:
        if is_uri(self.root):
            try:
                return pafs.FileSystem.from_uri(self.root)
            except Exception as e:   # pyarrow raises several kinds for an unknown scheme or bad URI
                raise UsageError(f"'{self.root}' is not a folder pyarrow can read ({e}).") from None
        return pafs.LocalFileSystem(), str(Path(self.root).expanduser().resolve())

    @property
    def local(self) -> bool:
        return not is_uri(self.root) or self.root.startswith("file://")

    def check(self) -> None:
        info = self.fs.get_file_info(self.base)
        if info.type != pafs.FileType.Directory:
            raise UsageError(f"'{self.root}' is not a folder.")

    def files(self) -> list[str]:
        """Every non-hidden file under the folder (paths inside :attr:`fs`), sorted."""
        sel = pafs.FileSelector(self.base, recursive=True)
        out = []
        for info in self.fs.get_file_info(sel):
            rel = self.relative(info.path)
            if info.type == pafs.FileType.File and not any(part.startswith(".") for part in rel.parts):
                out.append(info.path)
        return sorted(out)

    def relative(self, fs_path: str) -> PurePosixPath:
        return PurePosixPath(fs_path).relative_to(PurePosixPath(self.base))

    def label(self, fs_path: str) -> Optional[str]:
        """The class subfolder of a labelled folder, else None."""
        parts = self.relative(fs_path).parts
        return parts[0] if len(parts) > 1 else None

    def display(self, fs_path: str) -> str:
        """The path a result row keeps: a local absolute path, or the URI for other filesystems."""
        if not is_uri(self.root) or self.root.startswith("file://"):
            return fs_path
        scheme = self.root.split("://", 1)[0]
        return f"{scheme}://{fs_path}"

    def read(self, fs_path: str, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes: one past the image cap is enough to reject a file."""
        with self.fs.open_input_stream(fs_path) as f:
            return f.read(max_bytes + 1)


def check_out_dir(source: Source, out: str | os.PathLike) -> None:
    """The output must not be the images' folder nor inside it: maps would overwrite images or be
    listed as images when the run resumes."""
    if not source.local:
        return
    src, dst = Path(source.base), Path(out).expanduser().resolve()
    if dst == src or src in dst.parents:
        raise UsageError("--out-dir must be another folder than the images, not inside it "
                         "(the maps would overwrite them or be read as images).")
