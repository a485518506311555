"""Dataset errors."""


class DatasetError(ValueError):
    """A dataset that is missing or malformed; the message names the file and the fix."""
