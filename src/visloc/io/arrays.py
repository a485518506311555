"""Plain inputs of the evaluation commands: ``.npy`` arrays and text lists, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visloc.errors import InputError


def load_npy(path: str | Path, what: str) -> np.ndarray:
    """Load the array of a ``.npy`` file (never a pickle).

    Args:
        path: The ``.npy`` file.
        what: What the array is, for the error message (e.g. ``"ranks"``).

    Raises:
        InputError: ``path`` does not exist, is not a ``.npy`` array file, or holds Python objects; the
            message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a .npy array of {what} ({first})") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise InputError(f"{path}: expected a .npy array of {what}, got an .npz archive")
    return arr


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file, stripped of surrounding white space."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} file is not UTF-8 text") from e
    return [line.strip() for line in text.splitlines() if line.strip()]
