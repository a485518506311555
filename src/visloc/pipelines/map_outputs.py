"""Checks on a map folder before ``build_map`` does any work: no part of it may replace another kind of file.

A re-run resumes in the folder of an earlier (perhaps failed) run, so each part that exists must be of
its own kind: HDF5 features and matches, text pairs and record, a faiss index, a COLMAP database (or the
empty file a run killed while creating it leaves), a vocabulary, and ``sfm/`` a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from visloc.io.outputs import OutputError, check_file_output, check_h5_output, check_text_output, has_magic
from visloc.retrieval.faiss_files import check_index_output
from visloc.retrieval.vlad import is_vocabulary

if TYPE_CHECKING:
    from visloc.pipelines.map_build import MapFiles

SQLITE_MAGIC = b"SQLite format 3\0"


def _is_database(path: Path) -> bool:
    return path.stat().st_size == 0 or has_magic(path, SQLITE_MAGIC)


def check_map_outputs(files: MapFiles, features_option: str = "--out", matches_option: str = "--out") -> None:
    """Raise ``OutputError`` (one line naming the file and the option) unless every part of the map may be written.

    Args:
        files: the map's paths.
        features_option: the option naming ``files.features`` (``--features`` when the user gave it).
        matches_option: the option naming ``files.matches``.
    """
    root = files.root
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root}: exists and is not a folder; --out must name a map folder (choose another --out)")
    check_h5_output(files.features, "features", features_option)
    check_h5_output(files.global_features, "features")
    check_h5_output(files.matches, "matches", matches_option)
    check_text_output(files.pairs, "pairs")
    check_text_output(files.record, "map record")
    check_index_output(files.index)
    check_file_output(files.database, "COLMAP database", _is_database)
    check_file_output(files.vocabulary, "VLAD vocabulary", is_vocabulary)
    if files.model.exists() and not files.model.is_dir():
        raise OutputError(f"{files.model}: exists and is not a folder (the map's COLMAP model); choose another --out")
