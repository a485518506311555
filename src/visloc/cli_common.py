"""The CLI's error boundary and the options every command shares.

A ``VislocError`` (bad file, unknown name, option or conf value out of range) is the user's to fix:
``error: <its first line>`` on stderr, exit code 2. Any other exception is a bug: its traceback on
stderr, then one line asking to report it, exit code 1. ``run`` applies this to one call, and the
root command group (``BoundaryGroup``) applies it to every command, so a check made in a command
body follows the same rule.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from typer.core import TyperGroup

from visloc.errors import VislocError

if TYPE_CHECKING:
    from visloc.retrieval.rerank import RerankConf

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Conf override key=value (repeatable).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, or automatic when unset.")]
SetRerankMatcher = Annotated[Optional[list[str]], typer.Option(help="Re-ranking matcher override key=value "
                                                                     "(repeatable).")]

# typer's own control flow (exit codes, usage errors, Ctrl-C as Abort) passes through the boundary.
_CONTROL_FLOW = (typer.Exit, typer.Abort, typer.TyperException)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on a line of its own and exit with code 2.

    While a tqdm bar is open (an error raised inside a progress loop) the line goes through ``tqdm.write``,
    which clears the bar first; otherwise the line would be glued to the bar's text.
    """
    bars = sys.modules.get("tqdm")
    if bars is not None and getattr(bars.tqdm, "_instances", None):
        bars.tqdm.write(f"error: {message}", file=sys.stderr)
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def at_least(options: dict[str, int | None], low: int = 1) -> None:
    """One line naming the command's option (not the conf field behind it) when a count is below ``low``."""
    for name, value in options.items():
        if value is not None and value < low:
            fail(f"{name}: expected an integer >= {low}, got {value}")


def above(options: dict[str, float | None], low: float = 0.0) -> None:
    """One line naming the command's option when a number is not finite or not above ``low``."""
    for name, value in options.items():
        if value is not None and not (math.isfinite(value) and value > low):
            fail(f"{name}: expected a finite number > {low:g}, got {value}")


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def internal_error(error: BaseException) -> NoReturn:
    """Print the traceback of a bug and a hint to report it, and exit with code 1."""
    from visloc import __version__

    typer.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
    typer.echo(f"visloc {__version__}: internal error ({type(error).__name__}); please report it with the "
               "traceback above", err=True)
    raise typer.Exit(1)


def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``: a ``VislocError`` exits 2 with one line, any other exception exits 1 with its traceback."""
    try:
        return fn(*args, **kwargs)
    except _CONTROL_FLOW:
        raise
    except VislocError as e:
        fail(first_line(e))
    except Exception as e:  # noqa: BLE001 - the boundary: everything else is a bug to report
        internal_error(e)


class BoundaryGroup(TyperGroup):
    """The root command group: every command runs inside the error boundary of ``run``."""

    def invoke(self, ctx: Any) -> Any:  # noqa: D102 - typer's Context; see the class docstring
        return run(super().invoke, ctx)


def rerank_conf(top: int, db_features: Optional[Path], model: str, threshold: Optional[float], matcher: str,
                matcher_overrides: Optional[list[str]], min_inliers: int, rule: str = "min-inliers") -> RerankConf:
    """The ``RerankConf`` of the ``--rerank*`` and ``--db-features`` options (exit 2 when they do not fit)."""
    from typing import get_args

    from visloc.retrieval.rerank import RerankConf, RerankModel, RerankRule

    if top < 0:
        fail(f"--rerank: expected >= 0, got {top}")
    if model not in get_args(RerankModel):
        fail(f"--rerank-model: expected one of {', '.join(get_args(RerankModel))}, got {model!r}")
    if rule not in get_args(RerankRule):
        fail(f"--rerank-rule: expected one of {', '.join(get_args(RerankRule))}, got {rule!r}")
    at_least({"--rerank-min-inliers": min_inliers}, 0)
    above({"--rerank-threshold": threshold})
    if top and db_features is None:
        fail("--rerank needs --db-features (the database images' local features)")
    return run(RerankConf, top=top, db_features=db_features, model=model, threshold=threshold,
               matcher=matcher, matcher_overrides=tuple(matcher_overrides or ()), min_inliers=min_inliers,
               rule=rule)


def resolve_conf(spec: str, overrides: Optional[list[str]]) -> tuple[str, dict[str, Any]]:
    """``--conf`` is a registered name or a YAML file ``{name: ..., conf: {...}}``; ``--set`` wins over it."""
    from visloc.conf import load_yaml, merge, parse_overrides

    sets = run(parse_overrides, list(overrides or ()))
    if not spec.endswith((".yaml", ".yml")):
        return spec, sets
    data = run(load_yaml, Path(spec))
    unknown = sorted(set(data) - {"name", "conf"})
    if "name" not in data or unknown:
        fail(f"{spec}: expected keys 'name' and optional 'conf'" + (f", got unknown {unknown}" if unknown else ""))
    conf = data.get("conf") or {}
    if not isinstance(conf, dict):
        fail(f"{spec}: 'conf' must be a mapping")
    return str(data["name"]), merge(conf, sets)
