"""The TensorBundle reader (weights/converters/tf_bundle.py) on checkpoints written by TensorFlow itself.

The fixtures under tests/data/tf_bundle/ were written by TensorFlow 2.21 (tf-keras 2.21) with
``make_fixtures.py``, which also recorded what TF's own reader reads back from them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from visloc.weights.converters import crc32c, tf_table
from visloc.weights.converters.tf_bundle import TFBundle, resolve_prefix
from visloc.weights.load import WeightsError

DATA = Path(__file__).parent / "data" / "tf_bundle"
FIXTURES = {"ckpt": "ckpt", "saved_model": "saved_model", "sharded": "sharded", "official_like": "official_like"}


def _digest(value: bytes) -> str:
    return base64.b64encode(value).decode() if len(value) <= 1024 else "sha256:" + hashlib.sha256(value).hexdigest()


def check_against_tf(root: Path, name: str) -> TFBundle:
    """Every key of fixture ``name`` under ``root``: dtype, shape and value as TF's reader recorded them."""
    bundle = TFBundle.open(root / name)
    expected = json.loads((root / name / "expected.json").read_text())
    values = np.load(root / name / "expected.npz") if (root / name / "expected.npz").is_file() else None
    assert bundle.names() == sorted(expected)
    for key, (dtype, shape, *strings) in expected.items():
        assert (bundle.dtype(key), list(bundle.shape(key))) == (dtype, shape), key
        arr = bundle.read(key)
        assert arr.shape == tuple(shape), key
        if dtype == "string":
            assert [_digest(v) for v in arr.reshape(-1)] == strings[0], key
        elif values is not None:
            assert arr.dtype == values[key].dtype and np.array_equal(arr, values[key]), key
    return bundle


@pytest.mark.parametrize("name", list(FIXTURES))
def test_reads_what_tensorflow_wrote(name: str) -> None:
    check_against_tf(DATA, name)


def test_dtypes_and_values_of_the_dtype_checkpoint() -> None:
    b = TFBundle.open(DATA / "ckpt")
    assert b.prefix.name == "ckpt-1"  # chosen by the `checkpoint` state file
    assert b.read("bf16/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [1.0, -3.5, 0.0078125]
    assert b.read("bf16/.ATTRIBUTES/VARIABLE_VALUE").dtype == np.float32
    assert b.read("steps/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [0, 1, -5, 2**40, -(2**62)]
    assert b.read("word/.ATTRIBUTES/VARIABLE_VALUE").item() == b"hello, bundle"
    assert b.read("words/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [b"", b"a", ("longer string \u00fc" * 20).encode()]
    assert b.read("flags/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [True, False, False, True]
    assert b.read("empty/.ATTRIBUTES/VARIABLE_VALUE").shape == (0, 3)
    assert b.read("save_counter/.ATTRIBUTES/VARIABLE_VALUE").item() == 1
    assert b.shape("conv_kernel/.ATTRIBUTES/VARIABLE_VALUE") == (3, 3, 2, 4)
    assert dict(b.items()).keys() == set(b.names())


def test_sharded_checkpoint_reads_every_shard() -> None:
    b = TFBundle.open(DATA / "sharded")
    assert b.num_shards == 3
    assert {b.entries[n].shard_id for n in b.names()} == {0, 1, 2}


@pytest.mark.parametrize("path", ["saved_model", "saved_model/variables", "saved_model/variables/variables",
                                  "saved_model/variables/variables.index", "ckpt", "ckpt/ckpt-1"])
def test_open_accepts_the_usual_paths(path: str) -> None:
    prefix = resolve_prefix(DATA / path)
    assert prefix.with_name(prefix.name + ".index").is_file()
    assert prefix.name in ("variables", "ckpt-1")


def test_object_paths_recover_the_attribute_names() -> None:
    b = TFBundle.open(DATA / "saved_model")
    paths = b.object_paths()
    assert paths["variables/0/.ATTRIBUTES/VARIABLE_VALUE"] == "conv/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert paths["variables/5/.ATTRIBUTES/VARIABLE_VALUE"] == "bn/moving_variance/.ATTRIBUTES/VARIABLE_VALUE"
    official = TFBundle.open(DATA / "official_like")
    expected = json.loads((DATA / "official_like" / "paths.json").read_text())
    got = official.object_paths()
    assert {k: got[k] for k in expected} == expected
    assert got["_CHECKPOINTABLE_OBJECT_GRAPH"] == "_CHECKPOINTABLE_OBJECT_GRAPH"


# --- bad input ------------------------------------------------------------------------------------


@pytest.fixture()
def ckpt_copy(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "saved_model" / "variables", tmp_path / "variables")
    return tmp_path / "variables"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_missing_data_shard(ckpt_copy: Path) -> None:
    (ckpt_copy / "variables.data-00000-of-00001").unlink()
    with pytest.raises(WeightsError, match=r"variables\.data-00000-of-00001: missing data shard"):
        TFBundle.open(ckpt_copy)


def test_truncated_index(ckpt_copy: Path) -> None:
    index = ckpt_copy / "variables.index"
    index.write_bytes(index.read_bytes()[:30])
    with pytest.raises(WeightsError, match=r"variables\.index: truncated file"):
        TFBundle.open(ckpt_copy)
    index.write_bytes(b"")
    with pytest.raises(WeightsError, match="truncated file"):
        TFBundle.open(ckpt_copy)


def test_bad_magic(ckpt_copy: Path) -> None:
    index = ckpt_copy / "variables.index"
    _flip(index, len(index.read_bytes()) - 1)
    with pytest.raises(WeightsError, match=r"variables\.index: bad magic .*not a TensorFlow checkpoint index"):
        TFBundle.open(ckpt_copy)


def test_corrupt_index_block(ckpt_copy: Path) -> None:
    _flip(ckpt_copy / "variables.index", 3)
    with pytest.raises(WeightsError, match=r"variables\.index: crc mismatch in the table block at byte 0"):
        TFBundle.open(ckpt_copy)


def test_truncated_data_shard(ckpt_copy: Path) -> None:
    data = ckpt_copy / "variables.data-00000-of-00001"
    b = TFBundle.open(ckpt_copy)
    last = max(b.names(), key=lambda n: b.entries[n].offset)
    data.write_bytes(data.read_bytes()[: b.entries[last].offset + 2])
    with pytest.raises(WeightsError, match=r"data-00000-of-00001: truncated file: tensor .* the file ends at"):
        b.read(last)


def test_crc_mismatch_in_a_tensor(ckpt_copy: Path) -> None:
    b = TFBundle.open(ckpt_copy)
    key = "variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    _flip(ckpt_copy / "variables.data-00000-of-00001", b.entries[key].offset + 5)
    with pytest.raises(WeightsError, match=r"data-00000-of-00001: crc mismatch in tensor 'variables/0/"):
        b.read(key)
    assert TFBundle.open(ckpt_copy, verify=False).read(key).shape == (3, 3, 2, 4)
    graph = "_CHECKPOINTABLE_OBJECT_GRAPH"
    _flip(ckpt_copy / "variables.data-00000-of-00001", b.entries[graph].offset + 50)
    with pytest.raises(WeightsError, match="crc mismatch in tensor '_CHECKPOINTABLE_OBJECT_GRAPH'"):
        b.read(graph)


def test_paths_without_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nothing: no TensorFlow checkpoint here \(nothing\.index not found\)"):
        TFBundle.open(tmp_path / "nothing")
    with pytest.raises(WeightsError, match=r"no TensorFlow checkpoint to choose \(no \*\.index file"):
        TFBundle.open(tmp_path)
    with pytest.raises(WeightsError, match=r"no tensor 'nope' in the checkpoint"):
        TFBundle.open(DATA / "ckpt").read("nope")


def test_snappy_block_without_a_snappy_module() -> None:
    if importlib.util.find_spec("snappy") or importlib.util.find_spec("cramjam"):
        pytest.skip("a snappy module is installed")
    with pytest.raises(WeightsError, match="x.index: snappy-compressed table block; install python-snappy or cramjam"):
        tf_table._decompress(b"\x00", 1, "x.index")


# --- crc32c ---------------------------------------------------------------------------------------


def test_crc32c_known_values_and_the_vectorised_path() -> None:
    assert crc32c.value(b"123456789") == 0xE3069283
    assert crc32c.value(b"") == 0
    assert crc32c.unmask(crc32c.mask(0xE3069283)) == 0xE3069283
    assert crc32c.mask(0) == 0xA282EAD8
    rng = np.random.default_rng(0)
    for n in (1, 255, 65535, 65536, 65537, 300_001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        slow = crc32c._extend_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF
        assert crc32c._extend_fallback(0, data) == slow
        assert crc32c.extend(crc32c.value(data[: n // 3]), data[n // 3:]) == slow


# --- TensorFlow itself ----------------------------------------------------------------------------


def _tf_python() -> str | None:
    if importlib.util.find_spec("tensorflow"):
        return sys.executable
    return os.environ.get("VISLOC_TF_PYTHON")


@pytest.mark.slow
def test_fresh_checkpoints_written_by_tensorflow(tmp_path: Path) -> None:
    python = _tf_python()
    if python is None:
        pytest.skip("tensorflow is not installed here (set VISLOC_TF_PYTHON to an interpreter with "
                    "tensorflow-cpu and tf-keras to run this test)")
    run = subprocess.run([python, str(DATA / "make_fixtures.py"), "fixtures", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    if run.returncode == 3:
        pytest.skip("make_fixtures.py needs tf-keras (Keras 2) next to tensorflow")
    assert run.returncode == 0, run.stderr[-2000:]
    for name in FIXTURES:
        check_against_tf(tmp_path, name)
    expected = json.loads((tmp_path / "official_like" / "paths.json").read_text())
    got = TFBundle.open(tmp_path / "official_like").object_paths()
    assert {k: got[k] for k in expected} == expected


def test_attribute_paths_avoid_lists_and_positional_layer_names() -> None:
    from visloc.weights.converters.tf_bundle import TrackableNode, _bfs_paths, is_generic_edge

    # root -> layer_with_weights-0 / variables / conv (all the same layer) -> kernel
    nodes = [TrackableNode((("layer_with_weights-0", 1), ("variables", 2), ("conv", 1)), ()),
             TrackableNode((("kernel", 3),), ()), TrackableNode((("0", 3),), ()),
             TrackableNode((), (("VARIABLE_VALUE", "conv/kernel", "variables/0/.ATTRIBUTES/VARIABLE_VALUE"),))]
    assert _bfs_paths(nodes, is_generic_edge)[3] == ["conv", "kernel"]
    assert _bfs_paths(nodes, lambda _: False)[3] == ["layer_with_weights-0", "kernel"]
    assert not is_generic_edge("layer4") and is_generic_edge("layer-12") and is_generic_edge("trainable_variables")
