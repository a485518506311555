"""Strict typed configs (visloc.conf) and the name -> builder registry (visloc.registry)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from visloc.conf import (
    ConfError,
    apply_overrides,
    conf_to_dict,
    load_conf,
    load_yaml,
    merge,
    parse_overrides,
)
from visloc.errors import UnknownNameError
from visloc.registry import Registry


@dataclass(frozen=True)
class Inner:
    k: int = 2
    ratio: float = 0.5


@dataclass(frozen=True)
class Outer:
    name: str = "aliked"
    max_num: int = 1024
    thresh: float = 0.1
    flag: bool = False
    mode: Literal["fast", "accurate"] = "fast"
    sizes: tuple[int, ...] = (640, 480)
    maybe: Optional[float] = None
    inner: Inner = field(default_factory=Inner)


# --- load_conf -------------------------------------------------------------------------------


def test_load_conf_defaults_and_values():
    conf = load_conf(Outer, {"name": "disk", "max_num": 2048, "flag": True, "mode": "accurate"})
    assert conf == Outer(name="disk", max_num=2048, flag=True, mode="accurate")
    assert load_conf(Outer) == Outer()
    assert load_conf(Outer, None) == Outer()


def test_load_conf_rejects_unknown_key_and_lists_it():
    with pytest.raises(ConfError) as exc:
        load_conf(Outer, {"max_numm": 5, "name": "x"})
    msg = str(exc.value)
    assert "max_numm" in msg
    assert "Outer" in msg
    assert "max_num" in msg.split("known:")[1]  # the known keys are listed to spot the typo


def test_load_conf_rejects_unknown_nested_key_with_its_path():
    with pytest.raises(ConfError, match=r"conf\.inner.*'kk'"):
        load_conf(Outer, {"inner": {"kk": 1}})


def test_load_conf_coerces_int_to_float():
    conf = load_conf(Outer, {"thresh": 1, "inner": {"ratio": 3}})
    assert conf.thresh == 1.0 and type(conf.thresh) is float
    assert conf.inner.ratio == 3.0 and type(conf.inner.ratio) is float


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_num", "12"),
        ("max_num", 1.5),
        ("max_num", True),  # a bool is not an int here
        ("name", 3),
        ("flag", "yes"),
        ("flag", 1),
        ("thresh", "abc"),
        ("thresh", True),
        ("thresh", None),
        ("sizes", 640),
        ("sizes", "640"),
        ("inner", 3),
    ],
)
def test_load_conf_rejects_wrong_types(key, value):
    with pytest.raises(ConfError, match=rf"conf\.{key}"):
        load_conf(Outer, {key: value})


def test_load_conf_optional_accepts_none_and_value():
    assert load_conf(Outer, {"maybe": None}).maybe is None
    conf = load_conf(Outer, {"maybe": 2})
    assert conf.maybe == 2.0 and type(conf.maybe) is float
    with pytest.raises(ConfError, match=r"conf\.maybe"):
        load_conf(Outer, {"maybe": "two"})


def test_load_conf_literal():
    assert load_conf(Outer, {"mode": "accurate"}).mode == "accurate"
    with pytest.raises(ConfError, match=r"conf\.mode.*'slow'.*fast.*accurate"):
        load_conf(Outer, {"mode": "slow"})


def test_load_conf_nested_dataclass_from_mapping_and_instance():
    conf = load_conf(Outer, {"inner": {"k": 7}})
    assert conf.inner == Inner(k=7, ratio=0.5)
    assert isinstance(conf.inner, Inner)
    given = Inner(k=9)
    assert load_conf(Outer, {"inner": given}).inner is given


def test_load_conf_tuples_from_lists():
    conf = load_conf(Outer, {"sizes": [1, 2, 3]})
    assert conf.sizes == (1, 2, 3)
    assert isinstance(conf.sizes, tuple)
    with pytest.raises(ConfError, match=r"conf\.sizes\[1\]"):
        load_conf(Outer, {"sizes": [1, "two"]})


def test_load_conf_does_not_mutate_input():
    data = {"inner": {"k": 3}, "sizes": [1, 2]}
    load_conf(Outer, data)
    assert data == {"inner": {"k": 3}, "sizes": [1, 2]}


def test_conf_is_frozen():
    conf = load_conf(Outer, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.max_num = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.inner.k = 5  # type: ignore[misc]


def test_conf_to_dict_round_trip():
    conf = Outer(sizes=(3, 4), inner=Inner(k=1))
    d = conf_to_dict(conf)
    assert d["sizes"] == [3, 4]
    assert d["inner"] == {"k": 1, "ratio": 0.5}
    assert load_conf(Outer, d) == conf


# --- overrides ---------------------------------------------------------------------------------


def test_parse_overrides_dot_keys_and_yaml_scalars():
    out = parse_overrides(["inner.k=3", "name=superpoint", "flag=true", "thresh=0.25", "maybe=null",
                           "sizes=[1, 2]", "empty=", "text='007'", "expr=a=b"])
    assert out == {
        "inner": {"k": 3},
        "name": "superpoint",
        "flag": True,
        "thresh": 0.25,
        "maybe": None,
        "sizes": [1, 2],
        "empty": None,
        "text": "007",
        "expr": "a=b",  # only the first '=' splits
    }
    assert type(out["inner"]["k"]) is int


def test_parse_overrides_deep_keys_merge():
    assert parse_overrides(["a.b.c=1", "a.b.d=2", "a.e=x"]) == {"a": {"b": {"c": 1, "d": 2}, "e": "x"}}


def test_parse_overrides_errors():
    with pytest.raises(ConfError, match="novalue"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfError, match="conflicts"):
        parse_overrides(["a=1", "a.b=2"])


def test_apply_overrides_strings_and_mapping():
    base = Outer()
    new = apply_overrides(base, ["inner.k=5", "thresh=2", "mode=accurate", "sizes=[8, 9]"])
    assert new == Outer(thresh=2.0, mode="accurate", sizes=(8, 9), inner=Inner(k=5))
    assert type(new.thresh) is float
    assert base == Outer()  # the original is untouched
    assert apply_overrides(base, {"inner": {"ratio": 1}}).inner == Inner(k=2, ratio=1.0)


def test_apply_overrides_is_strict():
    with pytest.raises(ConfError, match="typo"):
        apply_overrides(Outer(), ["inner.typo=1"])
    with pytest.raises(ConfError, match=r"conf\.mode"):
        apply_overrides(Outer(), ["mode=slow"])
    with pytest.raises(ConfError, match=r"conf\.max_num"):
        apply_overrides(Outer(), ["max_num=lots"])


def test_merge_is_recursive_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    out = merge(base, {"a": {"c": 20}, "e": 5})
    assert out == {"a": {"b": 1, "c": 20}, "d": 3, "e": 5}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


# --- load_yaml ---------------------------------------------------------------------------------


def test_load_yaml_reads_mapping(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("max_num: 10\ninner:\n  k: 4\nsizes: [1, 2]\n")
    data = load_yaml(path)
    assert data == {"max_num": 10, "inner": {"k": 4}, "sizes": [1, 2]}
    assert load_conf(Outer, data) == Outer(max_num=10, inner=Inner(k=4), sizes=(1, 2))


def test_load_yaml_empty_is_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_yaml(path) == {}


def test_load_yaml_missing_names_file(tmp_path):
    path = tmp_path / "absent_conf.yaml"
    with pytest.raises(ConfError, match="absent_conf.yaml.*not found"):
        load_yaml(path)


def test_load_yaml_invalid_names_file(tmp_path):
    path = tmp_path / "broken_conf.yaml"
    path.write_text("a: [1, 2\nb: : :\n")
    with pytest.raises(ConfError, match="broken_conf.yaml.*invalid YAML"):
        load_yaml(path)


def test_load_yaml_non_mapping_names_file(tmp_path):
    path = tmp_path / "list_conf.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfError, match="list_conf.yaml.*mapping"):
        load_yaml(path)


# --- registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    conf: Outer


def _registry() -> Registry[Built]:
    reg: Registry[Built] = Registry("extractor", ("local",))
    reg.register("aliked", Outer(), Built, "ALIKED keypoints", kind="local")
    reg.register("disk", Outer(name="disk", max_num=5000), Built, "DISK keypoints", kind="local")
    return reg


def test_registry_build_with_default_conf():
    reg = _registry()
    obj = reg.build("disk")
    assert isinstance(obj, Built)
    assert obj.conf == Outer(name="disk", max_num=5000)
    assert reg.conf("aliked") is reg.entry("aliked").conf
    assert reg.entry("aliked").description == "ALIKED keypoints"


def test_registry_build_with_overrides():
    reg = _registry()
    assert reg.build("aliked", ["max_num=7", "inner.k=1"]).conf == Outer(max_num=7, inner=Inner(k=1))
    assert reg.build("aliked", {"thresh": 3}).conf.thresh == 3.0
    assert reg.conf("aliked") == Outer()  # the registered default is unchanged
    with pytest.raises(ConfError, match="unknown"):
        reg.build("aliked", ["nope=1"])


def test_registry_duplicate_name():
    reg = _registry()
    with pytest.raises(ValueError, match="extractor 'aliked' is already registered"):
        reg.register("aliked", Outer(), Built, "again", kind="local")
    assert reg.entry("aliked").description == "ALIKED keypoints"


def test_registry_unknown_name_lists_known():
    reg = _registry()
    with pytest.raises(UnknownNameError) as exc:  # a KeyError too, for callers that catch that
        reg.build("superpoint")
    msg = str(exc.value)
    assert "superpoint" in msg
    assert "aliked, disk" in msg


def test_registry_names_and_contains():
    reg = _registry()
    reg.register("brisk", Outer(), Built, "b", kind="local")
    assert reg.names() == ["aliked", "brisk", "disk"]
    assert "disk" in reg
    assert "sift" not in reg


def test_float_field_parses_scientific_strings():
    # YAML 1.1 reads "1e-3" as a string; a float field accepts it as the number it spells.
    from visloc.conf import apply_overrides

    @dataclasses.dataclass(frozen=True)
    class C:
        thresh: float = 0.5

    assert apply_overrides(C(), ["thresh=1e-3"]).thresh == 0.001
