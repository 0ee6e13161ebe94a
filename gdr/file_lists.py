"""Lists of audio files: the train / validation split of a training run, and the clips an evaluation loads.

Format (the one owner of it): UTF-8 text, one path per line, POSIX separators, relative to the data root, so
a list stays valid when the data folder moves (``train.txt``, ``val.txt`` of `RestorationDataModule
.write_file_lists`; ``data.files`` of evaluation). Reading also accepts absolute paths, blank lines and
``#`` comment lines.

The fingerprint of a list is ``sha256`` over its sorted ``<relative path>\\t<size in bytes>`` lines, the first
16 hex digits: two runs trained on the same files (same names, same sizes) have the same fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from gdr.atomic import write_text
from gdr.errors import AudioFileNotFoundError, ConfigError

FINGERPRINT_HEX = 16


def write_file_list(path: str | os.PathLike, names: Iterable[str]) -> Path:
    """Write `names` (paths relative to the data root, POSIX) one per line, atomically. Returns the path."""
    write_text(path, "".join(f"{name}\n" for name in names))
    return Path(path)


def read_file_list(path: str | os.PathLike, root: str | os.PathLike | None) -> list[Path]:
    """The files a list names, in its order: relative lines resolved against `root`.

    Raises `ConfigError` naming the list and line for a missing file, a duplicate, or a relative path
    without a root; `AudioFileNotFoundError` if the list itself is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileNotFoundError(f"{path}: no such file list")
    files, seen = [], set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {line_no}"
        entry = Path(line)
        if not entry.is_absolute():
            if root is None:
                raise ConfigError(f"{where}: relative path {line!r} needs data.root (the folder it is relative to)")
            entry = Path(root) / entry
        if not entry.is_file():
            raise ConfigError(f"{where}: {line!r} is not a file" + (f" under {root}" if root is not None else ""))
        if entry.resolve() in seen:
            raise ConfigError(f"{where}: {line!r} is listed twice")
        seen.add(entry.resolve())
        files.append(entry)
    if not files:
        raise ConfigError(f"{path}: the file list names no files")
    return files


def fingerprint(entries: Iterable[tuple[str, int]]) -> str:
    """Short sha256 (16 hex digits) of ``(relative path, size in bytes)`` pairs, independent of their order."""
    digest = hashlib.sha256("".join(f"{name}\t{size}\n" for name, size in sorted(entries)).encode())
    return digest.hexdigest()[:FINGERPRINT_HEX]
