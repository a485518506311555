"""Typed benchmark configs (``configs/benchmarks/*.yaml``): suites x methods, and the quick selection.

A method is an extractor + a feature matcher with ``key=value`` overrides, or an image matcher alone
(``extractor`` omitted). Every config is a frozen dataclass loaded with ``visloc.conf.load_conf``, so
an unknown key, a wrong type or an unknown protocol raises ``ConfError`` naming the file and the key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from visloc.conf import ConfError, load_conf, load_yaml
from visloc.eval.predictions import Method

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"
TWO_VIEW = CONFIGS / "two_view.yaml"


@dataclass(frozen=True)
class SuiteConf:
    """One ground-truth suite: where its reports go (``name``), its protocol and dataset, its heading."""

    name: str
    protocol: Literal["pose", "stereo", "homography"]
    title: str = ""
    dataset: str = ""  # homography: synthetic | graf
    step: int = 5  # pose: frames between the two images of a pair


@dataclass(frozen=True)
class MethodConf:
    """One table row: an extractor + feature matcher, or an image matcher (``extractor: null``)."""

    matcher: str
    extractor: str | None = None
    extractor_set: tuple[str, ...] = ()
    matcher_set: tuple[str, ...] = ()
    resize_max: int | None = 640
    label: str | None = None  # row name; default ``Method.label`` (``extractor+matcher``)

    def method(self, resize_max: int | None | Literal["conf"] = "conf") -> Method:
        """The evaluation ``Method`` (``resize_max`` overrides the conf's unless ``"conf"``)."""
        return Method(extractor=self.extractor, matcher=self.matcher, extractor_overrides=self.extractor_set,
                      matcher_overrides=self.matcher_set,
                      resize_max=self.resize_max if resize_max == "conf" else resize_max)

    @property
    def name(self) -> str:
        """The row's name (also its report file's stem)."""
        return self.label or self.method().label


@dataclass(frozen=True)
class QuickConf:
    """What ``--quick`` runs: suite names, method names (``MethodConf.name``) and the image size."""

    suites: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    resize_max: int | None = 320


@dataclass(frozen=True)
class BenchmarkConf:
    """Suites x methods, and the ``--quick`` subset."""

    suites: tuple[SuiteConf, ...]
    methods: tuple[MethodConf, ...]
    quick: QuickConf = QuickConf()

    def quick_subset(self) -> BenchmarkConf:
        """The quick suites and methods, at the quick ``resize_max``."""
        suites = tuple(s for s in self.suites if s.name in self.quick.suites)
        methods = tuple(replace(m, resize_max=self.quick.resize_max) for m in self.methods
                        if m.name in self.quick.methods)
        return replace(self, suites=suites, methods=methods)


def _check(conf: BenchmarkConf, where: str) -> BenchmarkConf:
    for what, names in (("suite", [s.name for s in conf.suites]), ("method", [m.name for m in conf.methods])):
        twice = sorted(n for n, c in Counter(names).items() if c > 1)
        if twice:
            raise ConfError(f"{where}: {what} names must be unique (give a 'label'), repeated: {twice}")
    for what, wanted, names in (("suites", conf.quick.suites, {s.name for s in conf.suites}),
                                ("methods", conf.quick.methods, {m.name for m in conf.methods})):
        unknown = sorted(set(wanted) - names)
        if unknown:
            raise ConfError(f"{where}: quick.{what}: unknown name(s) {unknown}")
    for s in conf.suites:
        if s.protocol == "homography" and s.dataset not in ("synthetic", "graf"):
            raise ConfError(f"{where}: suite {s.name}: homography dataset must be synthetic or graf, "
                            f"got {s.dataset!r}")
    return conf


def load_benchmark(path: str | Path = TWO_VIEW) -> BenchmarkConf:
    """Read and check a benchmark YAML (unique names, quick names that exist, known datasets)."""
    return _check(load_conf(BenchmarkConf, load_yaml(path), where=str(path)), str(path))
