"""Dataset errors."""

from visloc.errors import VislocError


class DatasetError(VislocError, ValueError):
    """A dataset that is missing or malformed; the message names the file and the fix."""
