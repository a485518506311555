"""Range checks of the retrieval, localization, event and training confs: one line naming Class.field (or
``train.field``) and the value; every default still builds."""

from __future__ import annotations

import dataclasses
import math

import pytest

from visloc.conf import ConfError
from visloc.events.est import ESTConf
from visloc.events.representations import HistogramConf, TimeSurfaceConf, VoxelGridConf
from visloc.events.simulator import EsimConf
from visloc.events.world_drive import WorldEventsConf
from visloc.localization.localize import LocalizerConf
from visloc.localization.sfm import SfMConf
from visloc.localization.triangulation import TriangulationConf
from visloc.retrieval.index_conf import IndexConf
from visloc.retrieval.rerank import RerankConf
from visloc.retrieval.verify import VerifyConf
from visloc.train.core import OptimConf, check_optim

INF, NAN = math.inf, math.nan
BAD = [
    (RerankConf, "threshold", INF), (RerankConf, "min_inliers", INF),
    (VerifyConf, "distance", INF), (VerifyConf, "residual", INF), (VerifyConf, "iterations", INF),
    (VerifyConf, "min_inliers", NAN),
    (LocalizerConf, "max_error", 0.0), (LocalizerConf, "max_error", INF), (LocalizerConf, "min_inlier_ratio", 1.5),
    (LocalizerConf, "min_inlier_ratio", NAN), (LocalizerConf, "num_retrieved", INF), (LocalizerConf, "seed", -2),
    (SfMConf, "max_error", -1.0), (SfMConf, "max_error", NAN), (SfMConf, "min_num_inliers", 0),
    (SfMConf, "min_model_size", 1), (SfMConf, "seed", -5),
    (TriangulationConf, "max_epipolar_error", 0.0), (TriangulationConf, "max_reprojection_error", INF),
    (TriangulationConf, "min_verified_matches", 0), (TriangulationConf, "min_angle", -1.0),
    (TriangulationConf, "min_angle", 270.0),
    (TimeSurfaceConf, "tau_us", INF),
    (ESTConf, "negative_slope", INF), (ESTConf, "fit_steps", -1), (ESTConf, "fit_samples", 0),
    (ESTConf, "fit_lr", 0.0), (ESTConf, "fit_lr", NAN),
    (EsimConf, "contrast_pos", INF), (EsimConf, "leak_rate_hz", INF), (EsimConf, "shot_noise_rate_hz", INF),
    (EsimConf, "refractory_us", INF), (EsimConf, "log_eps", INF),
]


@pytest.mark.parametrize(("cls", "field", "value"), BAD, ids=lambda v: getattr(v, "__name__", str(v)))
def test_an_out_of_range_value_names_the_conf_field_and_value(cls: type, field: str, value: float) -> None:
    with pytest.raises(ConfError) as info:
        cls(**{field: value})
    message = str(info.value)
    assert f"{cls.__name__}.{field}" in message and str(value) in message and "\n" not in message


@pytest.mark.parametrize(("field", "value"), [("lr", INF), ("lr", 0.0), ("weight_decay", NAN),
                                              ("weight_decay", -1.0), ("max_steps", INF), ("threads", -1)])
def test_optim_values_name_the_train_field(field: str, value: float) -> None:
    with pytest.raises(ConfError) as info:
        check_optim(dataclasses.replace(OptimConf(), **{field: value}))
    message = str(info.value)
    assert f"train.{field}:" in message and str(value) in message and "\n" not in message


def test_the_defaults_and_the_edges_still_build() -> None:
    for cls in (RerankConf, VerifyConf, LocalizerConf, SfMConf, TriangulationConf, VoxelGridConf, HistogramConf,
                TimeSurfaceConf, ESTConf, EsimConf, WorldEventsConf, IndexConf):
        cls()
    check_optim(OptimConf())
    LocalizerConf(seed=-1, min_inlier_ratio=0.0)
    SfMConf(seed=-1, min_model_size=2)
    TriangulationConf(min_angle=0.0)
    RerankConf(min_inliers=0)
    EsimConf(use_log=False, log_eps=0.0)
    ESTConf(fit_steps=0, negative_slope=0.0)
