"""Image names that every visloc file can hold.

Pairs files (``name0 name1``), poses files (``name qw ...``), camera files and image lists are
whitespace-separated, as hloc's: a name with a space, a tab or a line break cannot be written to them
and read back. Rather than accept such a name and lose it later (a pose computed and then not
written, a pair misread by the matcher), every job that takes image names (extract, pairs,
match-features, localize) refuses them at its start, listing the offending names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from visloc.errors import VislocError

_SHOWN = 5


class ImageNameError(VislocError, ValueError):
    """Image names that the whitespace-separated text formats cannot hold."""


def has_whitespace(name: str) -> bool:
    """Whether ``name`` holds a character that ``str.split()`` splits on."""
    return any(c.isspace() for c in name)


def check_names(names: Iterable[str], source: str | Path, hint: str = "rename them") -> None:
    """Raise ``ImageNameError`` naming ``source`` and the names with whitespace (the first few, and how many).

    Args:
        names: image names (paths relative to the image root).
        source: where the names come from (a folder, an image list, a feature or pairs file).
        hint: what the user can do, naming the command's option where one helps.
    """
    bad = [n for n in names if has_whitespace(n)]
    if not bad:
        return
    shown = ", ".join(repr(n) for n in bad[:_SHOWN]) + (f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
    raise ImageNameError(f"{source}: {len(bad)} image names contain whitespace, which pairs and pose files cannot "
                         f"hold: {shown}; {hint}")
