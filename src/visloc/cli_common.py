"""The CLI's error boundary: user-fixable errors print one line and exit with code 2."""

from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Conf override key=value (repeatable).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, or automatic when unset.")]


def fail(message: str) -> None:
    """Print ``error: message`` and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that carry a one-line message for the user."""
    from visloc.conf import ConfError
    from visloc.data.errors import DatasetError
    from visloc.io.features_h5 import FeatureStoreError
    from visloc.io.images import ImageError
    from visloc.io.matches_h5 import MatchStoreError
    from visloc.io.pairs import PairsError
    from visloc.weights.load import WeightsError

    return (ConfError, DatasetError, WeightsError, FeatureStoreError, ImageError, MatchStoreError, PairsError,
            KeyError, ValueError, FileNotFoundError)


def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a user-fixable error becomes one line on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        fail(str(msg).splitlines()[0] if msg else type(e).__name__)



def resolve_conf(spec: str, overrides: Optional[list[str]]) -> tuple[str, dict[str, Any]]:
    """``--conf`` is a registered name or a YAML file ``{name: ..., conf: {...}}``; ``--set`` wins over it."""
    from pathlib import Path

    from visloc.conf import load_yaml, merge, parse_overrides

    sets = parse_overrides(list(overrides or ()))
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
