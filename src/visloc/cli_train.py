"""``visloc train CONFIG [key=value ...]`` and ``visloc data bdd``: training and its data preparation."""

from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer

from visloc.cli_common import fail, run

data_app = typer.Typer(help="Prepare training data: public datasets, and datasets generated from the built-in world.",
                      no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="Recipe YAML (e.g. configs/hfnet_distill.yaml).")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Dot-overrides, e.g. train.max_steps=2000.")]
LabelsOpt = Annotated[Path, typer.Option(help="BDD100K label JSON file, or a folder of per-image label files.")]
ImagesOpt = Annotated[Path, typer.Option(help="Folder of the BDD100K frames (e.g. images/100k/train).")]
OutOpt = Annotated[Path, typer.Option(help="Output folder of the VGA copies and images.txt.")]
TimesOpt = Annotated[
    Optional[list[str]],
    typer.Option("--time", help="attributes.timeofday to keep (repeatable); default night and dawn/dusk."),
]
SizeOpt = Annotated[int, typer.Option(help="Longest side of the copies in pixels.")]
DryOpt = Annotated[bool, typer.Option(help="Print the recipe's summary and the resolved config, do not train.")]


def train(config: ConfigArg, overrides: OverridesArg = None, dry_run: DryOpt = False) -> None:
    """Train the recipe the YAML names (``recipe:``); resumes from RUN_DIR/checkpoints/last.ckpt when present."""
    import yaml

    from visloc.conf import conf_to_dict
    from visloc.train.recipe_base import get_recipe, load_recipe_conf

    name, conf = run(load_recipe_conf, config, list(overrides or ()))
    recipe = get_recipe(name)
    for line in recipe.describe(conf):
        typer.echo(line)
    if dry_run:
        typer.echo(yaml.safe_dump({"recipe": name, **conf_to_dict(conf)}, sort_keys=False).rstrip())
        return
    from visloc.train import core

    result = run(core.train, recipe, conf)
    if result.global_rank != 0:
        return
    resumed = f" (resumed from {result.resumed_from})" if result.resumed_from else ""
    typer.echo(f"train: {result.global_step} steps{resumed} -> {result.exported}")


def _folder_out(out: Path) -> None:
    """Before any work: ``--out`` is absent or a folder that can be written (one line otherwise)."""
    from visloc.io.outputs import check_folder_output

    run(check_folder_output, out)


@data_app.command("bdd")
def data_bdd(labels: LabelsOpt, images: ImagesOpt, out: OutOpt, time: TimesOpt = None, size: SizeOpt = 640) -> None:
    """Select BDD100K's night and dawn/dusk frames and write VGA copies (resumable)."""
    from visloc.data.bdd import NIGHT_TIMES, select_bdd
    _folder_out(out)
    if out.is_dir() and images.is_dir() and out.samefile(images):
        fail(f"{out}: is the --images folder; its copies would replace the frames (choose another --out)")
    summary = run(select_bdd, labels, images, out, times=tuple(time) if time else NIGHT_TIMES, size=size)
    for line in summary.lines("bdd"):
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


gldv2_app = typer.Typer(help="Google Landmarks v2: resumable, verified downloads; an index to train from.",
                        no_args_is_help=True)
data_app.add_typer(gldv2_app, name="gldv2")


@gldv2_app.command("download")
def gldv2_download(
    out: Annotated[Path, typer.Option(help="Dataset folder: <out>/<split>/ holds the CSVs, md5 files and images.")],
    split: Annotated[str, typer.Option(help="train, index or test.")] = "train",
    tars: Annotated[Optional[str], typer.Option(help="Tar indices, e.g. 0-499 or 3,7,10-12 (default: all).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="Mirror (default: GLDv2's public bucket).")] = None,
    jobs: Annotated[int, typer.Option(help="Tars fetched in parallel.")] = 4,
    keep_tars: Annotated[bool, typer.Option(help="Keep each tar after extracting it.")] = False,
    extract: Annotated[bool, typer.Option(help="Extract the tars (--no-extract: download and verify).")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Download GLDv2 tar by tar: range requests, retries, md5 checks, safe extraction; re-run to resume."""
    from visloc.data.gldv2_download import GLDV2_BASE_URL, Gldv2DownloadConf, download_gldv2, parse_tar_range

    def build() -> Gldv2DownloadConf:
        return Gldv2DownloadConf(split=cast(Any, split), tars=parse_tar_range(tars) if tars else (),
                                 base_url=base_url or GLDV2_BASE_URL, jobs=jobs, keep_tars=keep_tars, extract=extract)

    _folder_out(out)
    summary = run(download_gldv2, out, run(build), progress=not quiet)
    for line in summary.lines():
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


@gldv2_app.command("prepare")
def gldv2_prepare(
    root: Annotated[Path, typer.Argument(help="GLDv2 train folder: train.csv, train_clean.csv, images or tars.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder of the index (default: ROOT).")] = None,
    full: Annotated[bool, typer.Option(help="Labels of train.csv (all 4.1M images) instead of train_clean.csv.")]
    = False,
    val_fraction: Annotated[float, typer.Option(help="Per class, this share (at least one image) to validation.")]
    = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the per-class split.")] = 0,
    locate: Annotated[str, typer.Option(help="auto (extracted file, else tar member), tars or files.")] = "auto",
    verify_md5: Annotated[bool, typer.Option(help="Check each tar's md5 first (reads every byte).")] = False,
) -> None:
    """Index GLDv2 for training: relabel, split per class, locate each image (file or tar offset); no conversion."""
    from tqdm import tqdm

    from visloc.data.gldv2_prepare import Gldv2PrepareConf, prepare_gldv2

    if out is not None:
        _folder_out(out)
    conf = run(Gldv2PrepareConf, clean=not full, val_fraction=val_fraction, seed=seed, locate=cast(Any, locate),
               verify_md5=verify_md5)
    with tqdm(desc="tars", unit="tar", leave=False) as bar:
        summary = run(prepare_gldv2, root, out, conf, progress=lambda _: bar.update())
    for line in summary.lines():
        typer.echo(line)


revisitop_app = typer.Typer(help="Revisited Oxford / Paris and the 1M distractors: resumable, checked downloads.",
                            no_args_is_help=True)
data_app.add_typer(revisitop_app, name="revisitop")


@revisitop_app.command("download")
def revisitop_download(
    out: Annotated[Path, typer.Option(help="Datasets folder: <out>/<dataset>/ holds jpg/ and the image list.")],
    dataset: Annotated[str, typer.Option(help="roxford5k, rparis6k or revisitop1m.")] = "roxford5k",
    jobs: Annotated[int, typer.Option(help="Archives fetched in parallel.")] = 4,
    keep_archives: Annotated[bool, typer.Option(help="Keep each archive after extracting it.")] = False,
    retries: Annotated[int, typer.Option(help="Fetches again of an archive that fails its check.")] = 2,
    images_url: Annotated[Optional[str], typer.Option(help="Mirror folder of the archives.")] = None,
    list_url: Annotated[Optional[str], typer.Option(help="Mirror folder of the gnd pkl / image list.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Download a revisitop dataset: range requests, retries, archives checked against its list; re-run to resume."""
    from visloc.data.revisitop_download import RevisitopDownloadConf, download_revisitop

    def build() -> RevisitopDownloadConf:
        return RevisitopDownloadConf(dataset=cast(Any, dataset), jobs=jobs, keep_archives=keep_archives,
                                     retries=retries, images_url=images_url or "", list_url=list_url or "")

    _folder_out(out)
    summary = run(download_revisitop, out, run(build), progress=not quiet)
    for line in summary.lines():
        typer.echo(line)
    if not summary.ok:
        raise typer.Exit(1)


WORLD_KINDS = "landmarks, pairs, drive, event-drive, distill"
KindArg = Annotated[str, typer.Argument(help=f"What to generate: {WORLD_KINDS}.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="World seed (sets city.seed, default the conf's: 0); same "
                                                    "seed, same dataset.")]
SplitOpt = Annotated[str, typer.Option(help="City split whose places the dataset shows: train, val or test.")]
WorldOutOpt = Annotated[Path, typer.Option(help="Dataset folder (resumed when it holds the same job).")]
WorldSetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Conf override key=value (repeatable), "
                                                                        "e.g. city.num_streets_x=3.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress bars.")]


@data_app.command("world")
def data_world(kind: KindArg, out: WorldOutOpt, seed: SeedOpt = None, split: SplitOpt = "train",
               set_: WorldSetOpt = None, quiet: QuietOpt = False) -> None:
    """Generate a dataset from the built-in city (deterministic per seed; atomic, resumable writes)."""
    from visloc.data.world import run_generator
    _folder_out(out)
    files = run(run_generator, kind, out, split=split, seed=seed, overrides=list(set_ or ()), progress=not quiet)
    for line in files.summary.lines(f"world {kind} ({split})"):
        typer.echo(line)
