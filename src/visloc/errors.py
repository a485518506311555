"""The project's error boundary: one base type for problems a user can fix.

``VislocError`` marks an error whose message is meant for the user: a bad file, an unknown name, a
conf value out of range, an output that would be overwritten. The message is one line that names
the file (or the option) and the problem. The CLI prints such errors as ``error: <message>`` and
exits with code 2; any other exception is a bug and is shown with its traceback and a hint to
report it (``visloc.cli_common.run``).

Every domain error derives from it (``ConfError``, ``ImageError``, ``WeightsError``,
``FeatureStoreError``...). Most also derive from ``ValueError`` (or ``FileNotFoundError`` for
weights), so code that catches those keeps working. A plain ``ValueError`` raised by library code
means the caller (a program) broke a contract, not that the user gave bad input.
"""

from __future__ import annotations


class VislocError(Exception):
    """A user-fixable problem; ``str(error)`` is one line naming the file or option and the problem."""


class InputError(VislocError, ValueError):
    """Bad user input that no more specific error type describes (an option value, a name)."""


class UnknownNameError(VislocError, KeyError):
    """A name that is not registered (extractor, matcher, recipe...); the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; the message is for people
        return str(self.args[0]) if self.args else ""


class ItemError(VislocError, ValueError):
    """A failure tied to one item of a batch job (an image too small for the network, a malformed group).

    Batch jobs record it for that item, list it in their summary and go on with the others.
    """
