"""Image pairs: text files (``name0 name1`` per line) and generators.

Names are whitespace-separated, as in hloc's pairs files: a name holding whitespace cannot be written
(``write_pairs`` refuses it, ``io.names``), so what is written reads back the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from visloc.errors import InputError, VislocError
from visloc.io.atomic import atomic_write_text
from visloc.io.names import check_names
from visloc.io.outputs import check_text_output
from visloc.io.text import read_text

Pair = tuple[str, str]

class PairsError(VislocError, ValueError):
    """A pairs file that cannot be parsed."""


def read_pairs(path: str | Path) -> list[Pair]:
    """Read ``name0 name1`` lines; blank lines and ``#`` comments are ignored."""
    path = Path(path)
    pairs: list[Pair] = []
    for i, line in enumerate(read_text(path, PairsError, "pairs file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise PairsError(f"{path}:{i}: expected 'name0 name1', got {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[Pair], option: str = "--out") -> Path:
    """Write pairs atomically, one ``name0 name1`` per line.

    Raises:
        OutputError: ``path`` exists and is not a text file (a photo, an HDF5 file, a folder), or its
            folder cannot be written (``option`` names it in the message).
        ImageNameError: a name holds whitespace.
    """
    check_text_output(path, "pairs", option)
    check_names(dict.fromkeys(n for pair in pairs for n in pair), path, "rename those images")
    return atomic_write_text(path, "".join(f"{a} {b}\n" for a, b in pairs))


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair ``(names[i], names[j])`` with ``i < j``."""
    names = list(names)
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential_pairs(names: Sequence[str], window: int = 5, loop: bool = False) -> list[Pair]:
    """Each image with its next ``window`` images in order (``loop`` wraps around the end).

    ``window`` is clamped to ``len(names) - 1``: a larger one adds no pair, only time.
    """
    if window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    names = list(names)
    n = len(names)
    window = min(window, max(n - 1, 1))
    pairs: list[Pair] = []
    seen: set[frozenset[int]] = set()
    for i in range(n):
        for k in range(1, window + 1):
            j = i + k
            if j >= n:
                if not loop:
                    break
                j %= n
            key = frozenset((i, j))
            if i != j and key not in seen:
                seen.add(key)
                pairs.append((names[i], names[j]))
    return pairs
