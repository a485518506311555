"""The registries: index lines match their modules, kinds filter, unknown names, lazy listing, capabilities."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from visloc.errors import UnknownNameError
from visloc.registry import ALL, EXTRACTORS, MATCHERS, Capabilities, IndexLine, Registry
from visloc.registry_index import INDEX

BY_WHAT = {r.what: r for r in ALL}
LINES = [(what, name, line) for what, lines in INDEX.items() for name, line in lines.items()]


def test_every_registry_has_its_index_table():
    assert set(INDEX) == set(BY_WHAT)


@pytest.mark.parametrize(("what", "name", "line"), LINES, ids=[f"{w}:{n}" for w, n, _ in LINES])
def test_index_line_module_registers_the_name_with_that_kind(what, name, line):
    registry = BY_WHAT[what]
    assert line.kind in registry.kinds
    entry = registry.entry(name)  # imports line.module, which must register the name
    assert line.module in sys.modules
    assert entry.name == name and entry.kind == line.kind and entry.description == line.description
    assert isinstance(entry.capabilities(), Capabilities)


@pytest.mark.parametrize("registry", ALL, ids=[r.what for r in ALL])
def test_names_filter_by_kind(registry):
    names = registry.names()
    assert names == sorted(names) and set(INDEX[registry.what]) <= set(names)
    by_kind = {kind: registry.names(kind=kind) for kind in registry.kinds}
    assert sorted(n for ns in by_kind.values() for n in ns) == names  # each name in exactly one kind
    for kind, ns in by_kind.items():
        assert all(registry.kind_of(n) == kind for n in ns)
    assert registry.names(kind="no-such-kind") == []


def test_shipped_kinds():
    assert EXTRACTORS.names(kind="global") == ["delg-global", "hfnet-global", "netvlad"]
    assert {"delg", "delg-onnx", "hfnet", "hfnet-onnx", "vlad-aliked", "vlad-xfeat"} == set(
        EXTRACTORS.names(kind="local+global"))
    assert {"sift", "aliked-n16", "disk", "delf", "xfeat", "xfeat-onnx"} <= set(EXTRACTORS.names(kind="local"))
    assert MATCHERS.names(kind="image") == ["detector-pair", "loftr", "loftr-coarse", "loftr-coarse-onnx", "xfeat-star"]
    assert MATCHERS.names(kind="feature") == ["lighterglue", "lightglue", "nn-mutual", "nn-ratio"]


def test_constructed_registry_lists_index_and_registered_names_without_importing():
    reg: Registry[object] = Registry("thing", ("a", "b"), {"x": IndexLine("no.such.module", "a", "indexed x")})
    reg.register("y", {}, lambda conf: "built y", "registered y", kind="b")
    assert reg.names() == ["x", "y"]
    assert reg.names(kind="a") == ["x"] and reg.names(kind="b") == ["y"]
    assert reg.kind_of("x") == "a" and reg.description_of("x") == "indexed x"  # no import of no.such.module
    assert reg.build("y") == "built y" and "x" in reg and "z" not in reg
    with pytest.raises(ModuleNotFoundError, match="No module named"):
        reg.entry("x")


def test_register_errors():
    reg: Registry[object] = Registry("thing", ("a", "b"), {"x": IndexLine("m", "a", "indexed x")})
    reg.register("y", {}, lambda conf: None, "y", kind="a")
    with pytest.raises(ValueError, match=r"thing 'y' is already registered"):
        reg.register("y", {}, lambda conf: None, "y", kind="a")
    with pytest.raises(ValueError, match=r"kind 'c' is not one of \('a', 'b'\)"):
        reg.register("z", {}, lambda conf: None, "z", kind="c")
    with pytest.raises(ValueError, match=r"kind 'b' differs from registry_index's 'a'"):
        reg.register("x", {}, lambda conf: None, kind="b")
    with pytest.raises(ValueError, match=r"give kind and description"):
        reg.register("w", {}, lambda conf: None)
    reg.register("x", {}, lambda conf: None)  # kind and description from the index line
    assert reg.entry("x").kind == "a" and reg.entry("x").description == "indexed x"


@pytest.mark.parametrize("registry", [EXTRACTORS, MATCHERS], ids=["extractors", "matchers"])
@pytest.mark.parametrize("call", ["entry", "build", "conf", "kind_of", "description_of", "capabilities"])
def test_unknown_names_list_the_known_ones(registry, call):
    with pytest.raises(UnknownNameError) as info:
        getattr(registry, call)("no-such-part")
    message = str(info.value)
    assert message.startswith(f"unknown {registry.what} 'no-such-part'; known: ")
    assert all(name in message for name in registry.names())


def test_listing_names_imports_no_kornia():
    code = ("import sys\n"
            "from visloc.registry import ALL\n"
            "for r in ALL:\n"
            "    for n in r.names():\n"
            "        r.kind_of(n), r.description_of(n)\n"
            "    [r.names(kind=k) for k in r.kinds]\n"
            "heavy = sorted(m for m in ('kornia', 'cv2', 'h5py', 'faiss', 'onnxruntime') if m in sys.modules)\n"
            "print('heavy:', heavy)\n")
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "heavy: []", out.stdout + out.stderr


def test_capabilities_are_computed_without_building(monkeypatch, netvlad_checkpoint):
    def refuse(conf):
        raise AssertionError("capabilities built the part")

    for registry in ALL:
        for name in registry.names():
            entry = registry.entry(name)
            monkeypatch.setitem(registry._entries, name, dataclasses.replace(entry, builder=refuse))
    for registry in ALL:
        for name in registry.names():
            assert isinstance(registry.capabilities(name), Capabilities)
    with pytest.raises(AssertionError, match="built the part"):
        EXTRACTORS.build("sift")  # the patch is in force
    caps = EXTRACTORS.capabilities("netvlad", EXTRACTORS.conf("netvlad", [f"weights={netvlad_checkpoint}"]))
    assert caps == Capabilities(frozenset({"global"}), weights=(str(netvlad_checkpoint),))
    assert EXTRACTORS.capabilities("aliked-t16").descriptor == "aliked-64"
    assert MATCHERS.capabilities("lightglue", MATCHERS.conf("lightglue", ["features=disk"])).accepts == {"disk-128"}
    pair = MATCHERS.capabilities("detector-pair", MATCHERS.conf("detector-pair", ["extractor=disk"]))
    assert pair.outputs == {"matches"} and [Path(w).name for w in pair.weights] == ["disk-depth-save.pth",
                                                                                     "disk_lightglue.pth"]
