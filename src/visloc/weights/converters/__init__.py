"""Loaders that turn other projects' weight files (user paths) into visloc's networks."""
