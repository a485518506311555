"""The ``visloc`` command: a thin layer over the Python API (same defaults, same names).

Errors that a user can fix (``VislocError``: bad file, unknown name, bad conf) print one line and exit
with code 2; any other exception is a bug, shown with its traceback, exit code 1 (``cli_common``).
"""

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from visloc.cli_common import (
    BoundaryGroup,
    DeviceOpt,
    SetOpt,
    SetRerankMatcher,
    above,
    at_least,
    fail,
    rerank_conf,
    resolve_conf,
    run,
)
from visloc.cli_eval import bench, eval_app
from visloc.cli_events import events_app
from visloc.cli_export import export_app
from visloc.cli_live import live
from visloc.cli_loc import demo, localize, map_app
from visloc.cli_train import data_app, train

app = typer.Typer(cls=BoundaryGroup,
                  help="visloc: learned visual localization. Extract, match, estimate, evaluate, benchmark.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
pairs_app = typer.Typer(help="Make pair lists for matching.", no_args_is_help=True)
app.add_typer(pairs_app, name="pairs")
index_app = typer.Typer(help="Build retrieval indexes of global descriptors.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")
app.command()(bench)
app.command()(train)
app.add_typer(data_app, name="data")
app.add_typer(events_app, name="events")
app.add_typer(map_app, name="map")
app.command()(localize)
app.command()(demo)
app.command()(live)



@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False) -> None:
    """Configure logging for the command line only (the library attaches no handlers)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command("list")
def list_parts(confs: Annotated[bool, typer.Option("--confs", help="Also print each default conf (imports "
                                                                  "every part).")] = False) -> None:
    """Show every registry (extractors, matchers, estimators, models, recipes, representations) with kinds."""
    from visloc.conf import conf_to_dict
    from visloc.registry import ALL

    for reg in ALL:
        typer.echo(f"{reg.what}s ({', '.join(reg.kinds)}):")
        for name in reg.names():
            typer.echo(f"  {name:<16} {reg.kind_of(name):<13} {reg.description_of(name)}")
            if confs:
                typer.echo(f"  {'':<16} {'':<13} {json.dumps(conf_to_dict(run(reg.entry, name).conf))}")


@app.command()
def extract(images: Annotated[Path, typer.Argument(help="Image folder (searched recursively).")],
            out: Annotated[Path, typer.Option(help="HDF5 feature file (hloc layout).")],
            conf: Annotated[str, typer.Option(help="Registered extractor name or YAML file.")] = "aliked-n16",
            set_: SetOpt = None,
            image_list: Annotated[Optional[Path], typer.Option(help="Text file of image names to extract.")] = None,
            as_half: Annotated[bool, typer.Option(help="Store descriptors as float16.")] = False,
            overwrite: Annotated[bool, typer.Option(help="Discard an existing output.")] = False,
            device: DeviceOpt = None,
            batch_size: Annotated[int, typer.Option(help="Images of equal resized size per network call "
                                                         "(capped by the extractor's max_batch).")] = 1,
            num_workers: Annotated[Optional[int], typer.Option(help="Processes reading images ahead "
                                                                    "(default: 1 from 8 images on; with --ray: "
                                                                    "per task, 0).")] = None,
            ray: Annotated[bool, typer.Option("--ray", help="Extract in Ray tasks, on a local cluster unless "
                                                            "--ray-address (pip install -e \".[ray]\"); across "
                                                            "machines, IMAGES and --out must be on shared "
                                                            "storage.")] = False,
            ray_address: Annotated[Optional[str], typer.Option(help="An existing Ray cluster (auto, HOST:PORT, "
                                                                    "ray://HOST:10001); implies --ray.")] = None,
            ray_cpus: Annotated[Optional[int], typer.Option(help="CPUs of the local Ray cluster (default: "
                                                                 "all).")] = None,
            cpus_per_task: Annotated[int, typer.Option(help="With --ray: CPUs (torch threads) per task.")] = 1,
            gpus_per_task: Annotated[float, typer.Option(help="With --ray: GPUs per task.")] = 0.0,
            shard_size: Annotated[int, typer.Option(help="With --ray: images per task.")] = 64) -> None:
    """Extract features of every image below IMAGES into --out; resumes, skips bad images."""
    at_least({"--batch-size": batch_size, "--cpus-per-task": cpus_per_task, "--shard-size": shard_size})
    at_least({"--num-workers": num_workers}, 0)
    at_least({"--ray-cpus": ray_cpus})
    if not (math.isfinite(gpus_per_task) and gpus_per_task >= 0):
        fail(f"--gpus-per-task: expected a finite number >= 0, got {gpus_per_task}")
    names = None
    if image_list is not None:
        from visloc.io.arrays import read_lines

        names = run(read_lines, image_list, "image list")
    name, overrides = resolve_conf(conf, set_)
    shared = {"extractor": name, "overrides": overrides, "image_list": names, "as_half": as_half,
              "overwrite": overwrite, "device": device, "batch_size": batch_size}
    if ray or ray_address is not None:
        from visloc.pipelines.extract_ray import extract_features_ray

        summary = run(extract_features_ray, images, out, **shared, num_workers=num_workers or 0,
                      address=ray_address, num_cpus=ray_cpus, cpus_per_task=cpus_per_task,
                      gpus_per_task=gpus_per_task, shard_size=shard_size)
    else:
        if ray_cpus is not None or (cpus_per_task, gpus_per_task, shard_size) != (1, 0.0, 64):
            fail("--ray-cpus, --cpus-per-task, --gpus-per-task and --shard-size need --ray")
        from visloc.pipelines.extract import extract_features

        summary = run(extract_features, images, out, **shared, num_workers=num_workers)
    for line in summary.lines("extract"):
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


@pairs_app.command("exhaustive")
def pairs_exhaustive(out: Annotated[Path, typer.Option(help="Pairs file to write.")],
                     images: Annotated[Optional[Path], typer.Option(help="Image folder.")] = None,
                     features: Annotated[Optional[Path], typer.Option(help="Or a feature file.")] = None) -> None:
    """All unordered pairs of the images of a folder or of a feature file."""
    from visloc.io.locks import output_lock
    from visloc.io.outputs import check_text_output
    from visloc.io.pairs import exhaustive_pairs, write_pairs

    check_text_output(out, "pairs")  # before listing the images
    with output_lock(out):
        pairs = exhaustive_pairs(_names(images, features))
        write_pairs(out, pairs)
    typer.echo(f"{len(pairs)} pairs -> {out}")


@pairs_app.command("sequential")
def pairs_sequential(out: Annotated[Path, typer.Option(help="Pairs file to write.")],
                     images: Annotated[Optional[Path], typer.Option(help="Image folder.")] = None,
                     features: Annotated[Optional[Path], typer.Option(help="Or a feature file.")] = None,
                     window: Annotated[int, typer.Option(help="Pair each image with its next N.")] = 5,
                     loop: Annotated[bool, typer.Option(help="Wrap around the end of the sequence.")] = False) -> None:
    """Each image with its next --window images, in name order (video sequences)."""
    from visloc.io.locks import output_lock
    from visloc.io.outputs import check_text_output
    from visloc.io.pairs import sequential_pairs, write_pairs

    at_least({"--window": window})
    check_text_output(out, "pairs")
    with output_lock(out):
        pairs = run(sequential_pairs, _names(images, features), window=window, loop=loop)
        write_pairs(out, pairs)
    typer.echo(f"{len(pairs)} pairs -> {out}")


def _names(images: Optional[Path], features: Optional[Path]) -> list[str]:
    from visloc.io.features_h5 import list_feature_names
    from visloc.io.images import list_images
    from visloc.io.names import check_names

    if (images is None) == (features is None):
        fail("give exactly one of --images or --features")
    names = run(list_images, images) if images is not None else run(list_feature_names, features)
    run(check_names, names, images if images is not None else features, "rename those images")
    return names


@index_app.command("build")
def index_build(features: Annotated[Path, typer.Option(help="Feature file with a global_descriptor per image.")],
                out: Annotated[Path, typer.Option(help="Index file (+ .names.txt and .json beside it).")],
                set_: SetOpt = None) -> None:
    """Index the global descriptors of every image of --features (faiss: flat, ivfpq or hnsw)."""
    from visloc.pipelines.retrieve import build_index

    summary = run(build_index, features, out, overrides=list(set_ or ()))
    for line in summary.lines():
        typer.echo(line)


@app.command()
def search(index: Annotated[Path, typer.Option(help="Index written by 'visloc index build'.")],
           features: Annotated[Path, typer.Option(help="Query feature file with global descriptors.")],
           out: Annotated[Path, typer.Option(help="Pairs file to write, 'query db' per line, best first.")],
           k: Annotated[int, typer.Option("-k", "--top-k", help="Database images per query.")] = 50,
           rerank: Annotated[int, typer.Option(help="Re-rank each query's top N by inliers (0: off).")] = 0,
           db_features: Annotated[Optional[Path], typer.Option(help="Database feature file (to re-rank).")] = None,
           rerank_model: Annotated[str, typer.Option(help="homography, fundamental or affine.")] = "homography",
           rerank_threshold: Annotated[Optional[float], typer.Option(help="Inlier threshold in pixels "
                                                                     "(default: the estimator's).")] = None,
           rerank_matcher: Annotated[str, typer.Option(help="Registered matcher for re-ranking.")] = "nn-mutual",
           set_rerank_matcher: SetRerankMatcher = None,
           rerank_min_inliers: Annotated[int, typer.Option(help="Fewer inliers do not promote an image.")] = 15,
           ) -> None:
    """Retrieve the -k most similar database images of each query (a query is never paired with itself)."""
    from visloc.pipelines.retrieve import retrieve_pairs

    conf = rerank_conf(rerank, db_features, rerank_model, rerank_threshold, rerank_matcher, set_rerank_matcher,
                       rerank_min_inliers)
    summary = run(retrieve_pairs, index, features, out, k=k, rerank=conf)
    for line in summary.lines():
        typer.echo(line)


@app.command()
def vocab(images: Annotated[Path, typer.Argument(help="Image folder (searched recursively).")],
          out: Annotated[Path, typer.Option(help="Vocabulary file to write (vocab.pt).")],
          clusters: Annotated[int, typer.Option(help="Number of k-means clusters K.")] = 64,
          max_images: Annotated[Optional[int], typer.Option(help="Use at most N images (evenly spaced).")] = None,
          set_: SetOpt = None,
          device: DeviceOpt = None,
          extractor: Annotated[str, typer.Option(help="The VLAD extractor it is for: vlad-aliked (ALIKED-n16 "
                                                      "descriptors) or vlad-xfeat (XFeat's); --set sets "
                                                      "that local extractor.")] = "vlad-aliked") -> None:
    """Learn a VLAD vocabulary (local descriptors, k-means) for vlad-aliked (default) or vlad-xfeat."""
    from visloc.pipelines.vocab import build_vocabulary

    at_least({"--clusters": clusters, "--max-images": max_images})
    summary = run(build_vocabulary, images, out, num_clusters=clusters, max_images=max_images,
                  overrides=list(set_ or ()), device=device, extractor=extractor)
    for line in summary.lines():
        typer.echo(line)


@app.command("delf-pca")
def delf_pca(features: Annotated[Path, typer.Argument(help="Raw delf features of database images "
                                                            "(visloc extract --conf delf, no pca).")],
             out: Annotated[Path, typer.Option(help="PCA file to write (.npz), for --set pca=FILE.")],
             dim: Annotated[int, typer.Option(help="Output dimension (DELF: 40).")] = 40,
             whiten: Annotated[bool, typer.Option(help="Divide by the axes' standard deviations.")] = True,
             max_descriptors: Annotated[int, typer.Option(help="Fit on at most N descriptors (seeded).")] = 200_000,
             ) -> None:
    """Learn DELF's PCA whitening of its local descriptors from a database's features."""
    from visloc.features.delf_pca import learn_delf_pca_from_features

    at_least({"--dim": dim, "--max-descriptors": max_descriptors})
    path = run(learn_delf_pca_from_features, features, out, dim=dim, whiten=whiten, max_descriptors=max_descriptors)
    typer.echo(f"delf-pca: {dim}-d PCA{' with whitening' if whiten else ''} -> {path}")


@app.command("match-features")
def match_features_cmd(pairs: Annotated[Path, typer.Option(help="Pairs file, 'name0 name1' per line.")],
                       features: Annotated[Path, typer.Option(help="Feature file (hloc layout).")],
                       out: Annotated[Path, typer.Option(help="HDF5 match file (hloc layout).")],
                       conf: Annotated[str, typer.Option(help="Registered matcher name or YAML file.")] = "lightglue",
                       set_: SetOpt = None,
                       features1: Annotated[Optional[Path], typer.Option(help="Features of the second images.")] = None,
                       device: DeviceOpt = None) -> None:
    """Match the features of every pair into --out; resumes."""
    from visloc.pipelines.match_features import match_features

    name, overrides = resolve_conf(conf, set_)
    summary = run(match_features, pairs, features, out, matcher=name, overrides=overrides, features1=features1,
                  device=device)
    for line in summary.lines("match"):
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def consolidate(files: Annotated[list[Path], typer.Argument(help="Feature or match files written by visloc.")]) -> None:
    """Rewrite sharded feature / match files as single self-contained HDF5 files (for hloc's listing tools)."""
    from visloc.io.shards import consolidate as consolidate_file

    for path in files:
        run(consolidate_file, path)
        typer.echo(f"consolidated {path}")


@app.command("match-dense")
def match_dense_cmd(pairs: Annotated[Path, typer.Option(help="Pairs file, 'name0 name1' per line.")],
                    images: Annotated[Path, typer.Option(help="Image folder (names in the pairs file are "
                                                             "relative to it).")],
                    features: Annotated[Path, typer.Option(help="Feature file to write (keypoints merged per "
                                                               "image).")],
                    out: Annotated[Path, typer.Option(help="HDF5 match file (hloc layout).")],
                    conf: Annotated[str, typer.Option(help="Registered image matcher or YAML file.")]
                    = "detector-pair",
                    set_: SetOpt = None,
                    cell_size: Annotated[float, typer.Option(help="Keypoints of an image closer than this many "
                                                                  "pixels merge into one.")] = 2.0,
                    device: DeviceOpt = None) -> None:
    """Match image pairs with an image matcher into --features and --out (hloc layout); resumes."""
    from visloc.pipelines.match_dense import QuantizeConf, match_dense

    above({"--cell-size": cell_size})
    name, overrides = resolve_conf(conf, set_)
    quantize = run(QuantizeConf, cell_size=cell_size)
    summary = run(match_dense, pairs, images, features, out, matcher=name, overrides=overrides, quantize=quantize,
                  device=device)
    for line in summary.lines("match-dense"):
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def match(image0: Annotated[Path, typer.Argument(help="First image.")],
          image1: Annotated[Path, typer.Argument(help="Second image.")],
          extractor: Annotated[str, typer.Option(help="Registered extractor.")] = "aliked-n16",
          matcher: Annotated[str, typer.Option(help="Registered matcher.")] = "lightglue",
          model: Annotated[str, typer.Option(help="homography, fundamental, essential or affine.")] = "homography",
          set_extractor: Annotated[Optional[list[str]], typer.Option(help="Extractor override key=value.")] = None,
          set_matcher: Annotated[Optional[list[str]], typer.Option(help="Matcher override key=value.")] = None,
          set_estimator: Annotated[Optional[list[str]], typer.Option(help="Estimator override key=value.")] = None,
          intrinsics: Annotated[Optional[str], typer.Option(help="fx,fy,cx,cy for both images (essential).")] = None,
          out: Annotated[Optional[Path], typer.Option(help="Picture of inliers (green) and outliers (red).")] = None,
          device: DeviceOpt = None) -> None:
    """Match two images, estimate a model, print counts and the model, draw the matches."""
    from visloc.pipelines.match_pair import match_images

    K = None
    if intrinsics is not None:
        try:
            fx, fy, cx, cy = (float(v) for v in intrinsics.split(","))
        except ValueError:
            fail(f"--intrinsics: expected fx,fy,cx,cy, got {intrinsics!r}")
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    if model == "essential" and K is None:
        fail("--model essential needs --intrinsics fx,fy,cx,cy")
    res = run(match_images, image0, image1, extractor=extractor, matcher=matcher, model=model,
              extractor_overrides=set_extractor or (), matcher_overrides=set_matcher or (),
              estimator_overrides=set_estimator or (), K0=K, K1=K, out=out, device=device)
    typer.echo(f"keypoints: {len(res.keypoints0)} / {len(res.keypoints1)}")
    typer.echo(f"matches: {len(res.matches)}, {model} inliers: {res.estimate.num_inliers}")
    if res.estimate.model is None:
        typer.echo(f"{model}: estimation failed")
    else:
        typer.echo(f"{model}:\n{np.array2string(res.estimate.model, precision=6, suppress_small=True)}")
        if res.estimate.R is not None:
            typer.echo(f"R:\n{np.array2string(res.estimate.R, precision=6)}\nt: {res.estimate.t}")
    if out is not None:
        typer.echo(f"picture -> {out}")
