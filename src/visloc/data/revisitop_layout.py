"""revisitop's datasets as published, and the checks a download of them must pass (network-free).

Where upstream's ``python/download.py`` (filipradenovic/revisitop) fetches them, written as
``<out>/<dataset>/``::

    roxford5k    https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz
                 http://cmp.felk.cvut.cz/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl
    rparis6k     https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz, paris_2-v1.tgz
                 http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl
    revisitop1m  http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.1.tar.gz ... .100.tar.gz
                 http://ptak.felk.cvut.cz/revisitop/revisitop1m/revisitop1m.txt

The ``-v1`` archives are the face-blurred images the dataset owners published in June 2022 (revisitop's
README). Oxford's and Paris' archives are **flattened** into ``jpg/`` (Paris' members sit in per-landmark
folders, ``paris/<landmark>/<name>.jpg``; upstream moves every file into ``jpg/``), so that
``jpg/<name>.jpg`` is each name of the ground truth's ``imlist`` and ``qimlist`` (``data.oxford_paris``,
``pipelines.eval_landmarks.load_revisitop``). The 1M distractors keep their member paths: each line of
``revisitop1m.txt`` is an image's path under ``jpg/``, extension included, as upstream's ``configdataset``
reads it.

No md5 is published, so the image lists are the check (:func:`check_archive`): before anything of an archive
is written, the images it would write are compared with the list. A dataset of one archive (Oxford) must find
every listed image in it; an archive of several must hold at least one listed image, and a 1M archive nothing
unlisted (its list is the archives' content). Oxford's and Paris' archives may hold images the revisited
lists left out (Paris' corrupt ones): they are extracted and not counted. After the run, every listed image
must be in ``jpg/`` (:func:`missing_images`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from visloc.data.errors import DatasetError
from visloc.data.oxford_paris import load_gnd

#: the names shown of a longer list of images
SHOWN = 3


@dataclass(frozen=True)
class RevisitopSource:
    """One published dataset.

    Attributes:
        name: ``roxford5k``, ``rparis6k`` or ``revisitop1m``: the folder ``<out>/<name>/``.
        archives: the image archives' file names.
        images_url: the folder URL of the archives.
        list_name: the image list: ``gnd_<name>.pkl`` (the ground truth) or ``revisitop1m.txt``.
        list_url: the folder URL of the list.
        flatten: members are written as ``jpg/<file name>`` (their folders dropped); else as ``jpg/<path>``.
        unlisted_ok: an archive may hold images the list does not name.
    """

    name: str
    archives: tuple[str, ...]
    images_url: str
    list_name: str
    list_url: str
    flatten: bool
    unlisted_ok: bool


SOURCES: dict[str, RevisitopSource] = {
    "roxford5k": RevisitopSource("roxford5k", ("oxbuild_images-v1.tgz",),
                                 "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings", "gnd_roxford5k.pkl",
                                 "http://cmp.felk.cvut.cz/revisitop/data/datasets/roxford5k", True, True),
    "rparis6k": RevisitopSource("rparis6k", ("paris_1-v1.tgz", "paris_2-v1.tgz"),
                                "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings", "gnd_rparis6k.pkl",
                                "http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k", True, True),
    "revisitop1m": RevisitopSource("revisitop1m", tuple(f"revisitop1m.{i}.tar.gz" for i in range(1, 101)),
                                   "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg", "revisitop1m.txt",
                                   "http://ptak.felk.cvut.cz/revisitop/revisitop1m", False, False),
}


class ArchiveContentError(DatasetError):
    """An archive whose images do not match the published list (the wrong file, or an incomplete one)."""


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _check_name(name: str, where: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or name != str(p) or "\\" in name:
        raise DatasetError(f"{where}: {name!r} is not a relative image path")
    return name


def read_image_list(source: RevisitopSource, path: str | Path) -> tuple[str, ...]:
    """The images, as paths under ``jpg/``, that the list file ``path`` of ``source`` names, in its order.

    ``gnd_*.pkl``: ``imlist`` then ``qimlist`` (read by ``data.oxford_paris.load_gnd``'s restricted unpickler),
    each name with ``.jpg``; ``revisitop1m.txt``: one path per non-empty line.

    Raises:
        DatasetError: the file is unreadable, empty, or names an unsafe path (naming the file).
    """
    path = Path(path)
    if source.list_name.endswith(".pkl"):
        gnd = load_gnd(path)
        names = [f"{n}.jpg" for n in (*gnd.imlist, *gnd.qimlist)]
    else:
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: not a readable image list ({type(e).__name__}: {e})") from None
    if not names:
        raise DatasetError(f"{path}: lists no image")
    return tuple(dict.fromkeys(_check_name(n, str(path)) for n in names))


def member_target(source: RevisitopSource) -> Callable[[str], str | None]:
    """Where a member of an archive of ``source`` goes under ``jpg/`` (None: skipped: not a ``.jpg``)."""

    def target(name: str) -> str | None:
        if not name.lower().endswith(".jpg"):
            return None
        p = PurePosixPath(name)
        return p.name if source.flatten else str(p)

    return target


def check_archive(source: RevisitopSource, archive: str, listed: frozenset[str], plan: Mapping[str, str]) -> None:
    """Refuse ``archive`` (its plan ``{path under jpg/: member}``) when its images do not match ``listed``.

    Raises:
        ArchiveContentError: a one-archive dataset missing listed images, an archive with no listed image, or
            an unlisted image where the list is the archives' content (module docstring).
    """
    where = f"{archive} ({len(plan)} images)"
    if len(source.archives) == 1:
        missing = sorted(listed - plan.keys())
        if missing:
            raise ArchiveContentError(f"{where}: holds {len(listed) - len(missing)} of the {len(listed)} images of "
                                      f"{source.list_name}, missing {_shown(missing)}")
    if listed.isdisjoint(plan):
        raise ArchiveContentError(f"{where}: holds none of the {len(listed)} images of {source.list_name}")
    if not source.unlisted_ok:
        extra = sorted(plan.keys() - listed)
        if extra:
            raise ArchiveContentError(f"{where}: {len(extra)} images not in {source.list_name}: {_shown(extra)}")


def missing_images(jpg: str | Path, names: Sequence[str]) -> list[str]:
    """The ``names`` (paths under ``jpg``) that are not a file there, in order."""
    jpg = Path(jpg)
    return [n for n in names if not (jpg / n).is_file()]


def describe_missing(missing: Sequence[str], total: int, list_name: str) -> str:
    """One line: how many of the listed images are missing, and the first few."""
    return f"{len(missing)} of the {total} images of {list_name} are in no archive: {_shown(missing)}"


__all__ = ["SOURCES", "ArchiveContentError", "RevisitopSource", "check_archive", "describe_missing",
           "member_target", "missing_images", "read_image_list"]
