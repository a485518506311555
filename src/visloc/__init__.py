"""visloc: learned visual localization and image retrieval.

Importing the package has no side effects: no threads, flags, log handlers or downloads.
"""

__version__ = "0.1.0"
