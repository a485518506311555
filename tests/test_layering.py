"""Package layering and import hygiene: what each layer may import, and that imports have no side effects.

Two kinds of checks:

- Static (``ast``): every module's top-level ``visloc.*`` imports are checked against ``LAYERS``, a
  module may import only from a strictly lower layer (or its own package). Known violations that
  are being fixed are listed in ``KNOWN``; a new violation fails, and so does a ``KNOWN`` entry that
  no longer occurs (so the list only shrinks).
- Dynamic (subprocesses, so that this test session's imports do not leak in): which third-party
  packages and ``visloc`` modules a fresh ``import`` pulls in, and that importing every module of the
  package changes no process-wide state.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "visloc"

#: bottom to top; each entry is one layer of ``visloc`` module prefixes (longest prefix wins). A
#: module may import from a lower layer, or from inside its own top-level package; two packages of
#: the same layer are independent. The bands are the design's (cli > pipelines > train/eval/viz >
#: features/matching/retrieval/localization/events > models > weights/io/data > geometry/utils/conf/
#: errors/types/registry), split where a band has an internal order.
LAYERS: tuple[tuple[str, ...], ...] = (
    # foundations
    ("visloc", "visloc.errors"),
    ("visloc.conf", "visloc.types", "visloc.utils", "visloc.export.spec"),  # export.spec: what networks declare
    ("visloc.conf_ranges",),  # the conf field range checks, on visloc.conf
    ("visloc.registry",),
    ("visloc.registry_index",),
    ("visloc.geometry",),
    # storage, records and data
    ("visloc.io",),
    ("visloc.weights", "visloc.data", "visloc.export.runtime"),
    # pure networks
    ("visloc.models",),
    # loaders that build models from files (visloc.weights' records sit below models)
    ("visloc.weights.hfnet", "visloc.weights.xfeat", "visloc.weights.converters",
     "visloc.export"),  # export: MODELS builders
    # parts: matchers, then retrieval (its re-ranking verifies with matches), then extractors
    ("visloc.matching",),
    ("visloc.retrieval",),
    ("visloc.features", "visloc.localization", "visloc.events"),
    # programs on top of the parts
    ("visloc.train", "visloc.eval", "visloc.viz"),
    ("visloc.pipelines",),
    ("visloc.cli_common",),
    ("visloc.cli_eval", "visloc.cli_events", "visloc.cli_export", "visloc.cli_live", "visloc.cli_loc",
     "visloc.cli_train"),
    ("visloc.cli",),
    ("visloc.__main__",),
)

#: (importer, imported) pairs that break the layering and are being fixed by other branches; the
#: lead empties this set. Do not add to it: fix the import instead.
KNOWN: set[tuple[str, str]] = set()  # empty: the eval -> pipelines cycle of REVIEW.md 1.3 is gone

#: third-party packages that pure networks must not pull in (models are nn.Modules only)
HEAVY = ("kornia", "faiss", "lightning", "pytorch_lightning")


def _group(module: str) -> str | None:
    """The longest prefix in ``LAYERS`` of ``module`` (the root ``visloc`` matches only itself), or None."""
    best = None
    for layer in LAYERS:
        for prefix in layer:
            hit = module == prefix or (prefix != "visloc" and module.startswith(prefix + "."))
            if hit and (best is None or len(prefix) > len(best)):
                best = prefix
    return best


def _layer(module: str) -> int:
    """Index in ``LAYERS`` of the group of ``module``."""
    group = _group(module)
    if group is None:
        raise AssertionError(f"{module}: in no layer of LAYERS; add its package there")
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def _allowed(module: str, target: str) -> bool:
    """An import inside one group (a package, or a split-off part such as weights.hfnet) or one layer down."""
    return _group(target) == _group(module) or _layer(target) < _layer(module)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(stmts: list[ast.stmt], module: str) -> set[str]:
    """``visloc.*`` modules imported at import time (not in functions, not under ``TYPE_CHECKING``)."""
    out: set[str] = set()
    for s in stmts:
        if isinstance(s, ast.Import):
            out |= {a.name for a in s.names}
        elif isinstance(s, ast.ImportFrom):
            base = s.module or ""
            if s.level:  # relative: resolve against the importing package
                pkg = module.split(".") if PACKAGE_FILES.get(module, Path()).name == "__init__.py" else \
                    module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - s.level + 1] + ([base] if base else []))
            # ``from visloc.a import b`` may import the submodule visloc.a.b: count the deepest name
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in PACKAGE_FILES else base for a in s.names}
        elif isinstance(s, ast.If) and not _is_type_checking(s.test):
            out |= _top_level_imports(s.body + s.orelse, module)
        elif isinstance(s, ast.Try):
            out |= _top_level_imports(s.body + s.orelse + s.finalbody + [x for h in s.handlers for x in h.body],
                                      module)
    return {m for m in out if m == "visloc" or m.startswith("visloc.")}


PACKAGE_FILES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _violations() -> set[tuple[str, str]]:
    found = set()
    for module, path in PACKAGE_FILES.items():
        for target in _top_level_imports(ast.parse(path.read_text()).body, module):
            if not _allowed(module, target):
                found.add((module, target))
    return found


def test_every_module_has_a_layer():
    missing = [m for m in PACKAGE_FILES if _group(m) is None]
    assert missing == [], f"modules in no layer of LAYERS (add their package there): {missing}"
    assert _group("visloc.delg") is None  # a new package is not silently put in the root's layer


def test_imports_point_down():
    found = _violations()
    new = sorted(found - KNOWN)
    lines = [f"{a} imports {b} (layer {_layer(a)} -> {_layer(b)})" for a, b in new]
    assert not new, "imports that point up or sideways (fix them; see LAYERS):\n" + "\n".join(lines)
    fixed = sorted(KNOWN - found)
    assert not fixed, f"KNOWN violations that no longer occur, remove them from KNOWN: {fixed}"


def test_layer_check_catches_an_upward_import():
    """The checker itself: an import from a higher layer and a sideways one are flagged, a lower one is not."""
    def bad(module: str, code: str) -> bool:
        return any(not _allowed(module, t) for t in _top_level_imports(ast.parse(code).body, module))

    assert bad("visloc.models.hfnet", "from visloc.features.hfnet import HFNetExtractor")
    assert bad("visloc.matching.lightglue", "import visloc.features.learned")
    assert bad("visloc.data.bdd", "try:\n    from visloc.pipelines.common import JobSummary\nexcept ImportError:\n"
                                  "    pass")
    assert not bad("visloc.models.hfnet", "from visloc.weights.records import IMAGENET_GRAY")
    assert not bad("visloc.models.hfnet", "def f():\n    from visloc.features import EXTRACTORS")  # lazy
    assert not bad("visloc.models.hfnet", "if TYPE_CHECKING:\n    from visloc.features import Extractor")
    assert bad("visloc.weights.records", "from visloc.weights.hfnet import load_hfnet")  # same package, higher part
    assert not bad("visloc.weights.hfnet", "from visloc.weights.load import safe_load")
    assert not bad("visloc.features.hfnet", "from .base import Extractor")  # relative, same package
    assert bad("visloc.features.hfnet", "from ..pipelines import common")
    assert _layer("visloc.weights.hfnet") > _layer("visloc.models.hfnet") > _layer("visloc.weights.records")


# ---------------------------------------------------------------- fresh interpreters


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter importing this checkout; it prints one JSON object last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_IMPORT_EACH = """
import importlib, json, sys
heavy = {heavy!r}
report = {{}}
for name in {modules!r}:
    before = set(sys.modules)
    importlib.import_module(name)
    new = set(sys.modules) - before
    report[name] = sorted(m for m in new if m.split(".")[0] in heavy or m in {forbidden!r}
                          or any(m.startswith(f + ".") for f in {forbidden!r}))
print(json.dumps(report))
"""


def _pulled_in(modules: list[str], heavy: tuple[str, ...], forbidden: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """For each module (imported in order), the ``heavy`` / ``forbidden`` modules its import added."""
    report = _run(_IMPORT_EACH.format(heavy=heavy, modules=modules, forbidden=forbidden))
    return {k: v for k, v in report.items() if v}


def _submodules(package: str) -> list[str]:
    return sorted(m for m in PACKAGE_FILES if m == package or m.startswith(package + "."))


def test_models_are_pure_networks():
    modules = _submodules("visloc.models")
    assert "visloc.models.hfnet" in modules and "visloc.models.superpoint" in modules
    assert _pulled_in(modules, HEAVY, ("visloc.features",)) == {}


def test_models_read_no_files():
    """Pure networks open nothing: no ``open``/``torch.load``/``scipy.io`` in ``models/`` (loaders live in weights/)."""
    calls = []
    for module in _submodules("visloc.models"):
        tree = ast.parse(PACKAGE_FILES[module].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("open", "torch.load", "torch.save", "np.load", "scipy.io.loadmat") or \
                        name.endswith((".read_bytes", ".read_text", ".open")):
                    calls.append(f"{module}:{node.lineno} {name}")
    assert calls == []


def test_weights_records_are_light():
    modules = ["visloc.weights", *_submodules("visloc.weights")]
    assert _pulled_in(modules, ("kornia", "faiss", "lightning"), ("visloc.features",)) == {}


def test_cli_import_is_light():
    """``visloc --help`` must stay fast: today the CLI modules import neither torch nor any heavy library."""
    modules = ["visloc.cli", "visloc.cli_common", "visloc.cli_eval", "visloc.cli_events", "visloc.cli_export",
               "visloc.cli_live", "visloc.cli_loc", "visloc.cli_train"]
    assert _pulled_in(modules, ("torch", *HEAVY, "cv2", "h5py", "pycolmap", "onnxruntime")) == {}


def test_listing_the_registries_imports_no_kornia():
    report = _run("""
import json, sys
from visloc import registry
names = {r.what if hasattr(r, "what") else str(i): r.names() for i, r in enumerate(registry.ALL)}
print(json.dumps({"names": names, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in
                                                  ("kornia", "faiss", "lightning", "torch", "cv2"))}))
""")
    assert report["heavy"] == []
    assert any("aliked-n16" in names for names in report["names"].values())  # the index was really listed


_STATE = """
import json, logging, os, sys, warnings
import numpy as np
import torch

def state():
    return {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "cudnn": [torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                  torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32],
        "matmul": [torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()],
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad": torch.is_grad_enabled(),
        "torch_rng": torch.random.get_rng_state().sum().item(),
        "numpy_rng": int(np.random.get_state()[1].sum()),
        "root_handlers": [repr(h) for h in logging.root.handlers],
        "root_level": logging.root.level,
        "disable": logging.root.manager.disable,
        "warnings": [repr(f) for f in warnings.filters],
        "sys_path": list(sys.path),
        "environ": dict(os.environ),
    }

# third-party libraries first: what they do on import is theirs, not visloc's
for lib in THIRD_PARTY:
    try:
        __import__(lib)
    except ImportError:
        pass
before = state()
failed = []
IMPORTS
after = state()
changed = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
if "environ" in changed:
    b, a = changed["environ"]
    changed["environ"] = {k: [b.get(k), a.get(k)] for k in set(a) | set(b) if a.get(k) != b.get(k)}
print(json.dumps({"failed": failed, "changed": changed,
                  "count": sum(1 for m in sys.modules if m.startswith("visloc."))}))
"""

#: imports every module of the package (the statement the state check runs between its two snapshots)
IMPORT_ALL = """
import pkgutil, importlib, visloc
for info in pkgutil.walk_packages(visloc.__path__, "visloc.", onerror=lambda name: failed.append(name)):
    if info.name == "visloc.__main__":  # runs the CLI by design
        continue
    try:
        importlib.import_module(info.name)
    except Exception as e:
        failed.append(f"{info.name}: {e.__class__.__name__}: {e}")
"""

THIRD_PARTY = ("torchvision", "kornia", "kornia.feature", "faiss", "lightning", "lightning.pytorch", "cv2", "h5py",
               "pycolmap", "onnx", "onnxruntime", "scipy.io", "scipy.spatial", "typer", "yaml", "PIL", "tqdm",
               "matplotlib", "matplotlib.pyplot", "tensorboard", "torch.utils.tensorboard")


def _state_change(imports: str, third_party: tuple[str, ...]) -> dict:
    code = _STATE.replace("THIRD_PARTY", repr(third_party)).replace("IMPORTS", imports)
    return _run(code)


def test_state_check_sees_changes():
    """The checker itself: a module doing what visloc must not do at import is caught on each count."""
    report = _state_change("\n".join([
        "torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)",  # a change whatever OMP_NUM_THREADS is
        "logging.basicConfig()", "warnings.simplefilter('ignore')",
        "torch.backends.cudnn.benchmark = True", "torch.set_default_dtype(torch.float64)",
        "sys.path.append('/nowhere')", "os.environ['VISLOC_PROBE'] = '1'", "torch.manual_seed(3)"]), ())
    changed = report["changed"]
    assert {"num_threads", "root_handlers", "warnings", "cudnn", "default_dtype", "sys_path", "environ",
            "torch_rng"} <= set(changed)
    assert changed["environ"] == {"VISLOC_PROBE": [None, "1"]}


@pytest.mark.slow
def test_importing_every_module_changes_no_global_state():
    report = _state_change(IMPORT_ALL, THIRD_PARTY)
    assert report["failed"] == []
    assert report["count"] >= len(PACKAGE_FILES) - 2  # every module was imported (not visloc, not __main__)
    assert report["changed"] == {}


NETWORK = ("urllib.request", "urllib.error", "http.client", "http.server", "socket", "ftplib", "requests", "httpx",
           "aiohttp", "urllib3", "torch.hub", "visloc.io.download")


def test_only_the_download_commands_reach_the_network():
    """Offline by construction: the one module that speaks HTTP is ``io.download``, and only the explicit
    ``visloc data ... download`` commands (``data.gldv2_download``, ``data.revisitop_download``) import it; every
    import counts, also the ones inside functions."""
    found: dict[str, set[str]] = {}
    for module, path in PACKAGE_FILES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            hits = {n for n in names if n in NETWORK or n.startswith(tuple(f"{x}." for x in NETWORK))}
            if hits:
                found.setdefault(module, set()).update(hits)
    assert found == {"visloc.io.download": {"urllib.request", "urllib.error", "http.client"},
                     "visloc.data.gldv2_download": {"visloc.io.download"},
                     "visloc.data.revisitop_download": {"visloc.io.download"}}


def test_ray_is_an_optional_extra_imported_lazily():
    """Ray (``pip install -e ".[ray]"``) is imported in one place, ``ray_tasks.import_ray``, when a ``--ray`` job
    runs: importing the modules that use it, or the CLI, does not import it."""
    found = set()
    for module, path in PACKAGE_FILES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.add(module)
    assert found == {"visloc.pipelines.ray_tasks"}
    modules = ["visloc.cli", "visloc.pipelines.ray_tasks", "visloc.pipelines.extract_ray"]
    assert _pulled_in(modules, ("ray",)) == {}
