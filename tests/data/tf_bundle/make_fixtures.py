"""Write TensorFlow checkpoints for visloc's TensorBundle reader tests (needs TensorFlow; not visloc).

Run with an interpreter that has ``tensorflow`` (and ``tf_keras`` for Keras 2 naming, as the official
DELG exports of 2020 were written by TF 2.3's Keras 2), outside visloc's venv::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf-keras numpy
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tests/data/tf_bundle/make_fixtures.py fixtures tests/data/tf_bundle
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tests/data/tf_bundle/make_fixtures.py delg OUT --width-div 1

``fixtures DIR`` writes the committed fixtures; each ``DIR/<name>/`` gets ``expected.json``
(``{key: [dtype, shape]}`` for every key as TF's own reader lists it, with the string tensors base64-encoded,
or their sha256 above 1 KB) and, except ``official_like``, ``expected.npz`` (the numeric tensors read back by
``tf.train.load_variable``; bfloat16 as float32):

- ``ckpt/``: ``tf.train.Checkpoint.save`` of variables of many dtypes (``ckpt-1`` + ``checkpoint`` file);
- ``saved_model/variables/``: ``tf.saved_model.save`` of a Keras model (Conv2D, BatchNormalization, Dense);
  the ``saved_model.pb`` is not kept (the reader needs only ``variables/``);
- ``sharded/``: a checkpoint cut into several ``.data`` shards by ``MaxShardSizePolicy``;
- ``official_like/variables/``: a SavedModel with the module structure of the official DELG exports
  (``_model`` -> ``backbone`` / ``attention`` / ``autoencoder``, DELF's ResNet-50 attribute names), its
  channel widths divided by 64 so that it stays small; ``paths.json`` maps its ``_model/variables/N`` keys
  to the Python attribute paths of the same variables (``_model/backbone/l2a/conv2a/kernel/...``).

``keras-resnet-names OUT.json`` records the layer and weight names (and shapes) of the h5 that
``tf.keras.applications.ResNet50(weights=None, include_top=False).save_weights`` writes: the new naming of
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` (committed as ``tests/data/keras_resnet50_notop_names.json``).

``delg OUT`` writes ``OUT/variables/`` of a full-width official-like DELG R50 with random weights and
statistics, plus ``OUT/io.npz``: a random input image and the TF forward's outputs on it (``block3``,
``attention`` scores, ``local`` autoencoder code, ``embedding`` before L2), NHWC.

The network below is written from the DELF / DELG papers and the layer list in visloc's research notes
(docs of tensorflow/models ``delf/python/training/model``): Keras Conv2D / BatchNormalization defaults
(bias, eps 1e-3), stride on the 1x1 conv of a stage's first block, conv1 7x7/2 "same", max-pool 3x3/2
"valid", conv4 subsampled by a 1x1/2 max-pool (``block3``), GeM p=3 and a Dense embedding.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import string
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras"):  # Keras 3 tracks and names variables differently
    raise SystemExit(3)  # the tests skip on this code: "needs tf-keras and TF_USE_LEGACY_KERAS=1"
layers = tf.keras.layers
RNG = np.random.default_rng(11)
LETTERS = string.ascii_lowercase


def _string_digest(value: bytes) -> str:
    """``value`` base64-encoded, or ``sha256:<hex>`` when longer than 1 KB (the object graphs)."""
    return base64.b64encode(value).decode() if len(value) <= 1024 else "sha256:" + hashlib.sha256(value).hexdigest()


def _expected(prefix: str, out: Path, values: bool = True) -> None:
    """Record every key of the checkpoint at ``prefix`` with TF's reader into ``out`` (the numeric values
    into ``expected.npz`` when ``values``)."""
    numeric, meta = {}, {}
    for key, shape in tf.train.list_variables(prefix):
        value = tf.train.load_variable(prefix, key)
        arr = np.asarray(value)
        dtype = str(arr.dtype)
        if dtype == "bfloat16":
            arr = arr.astype(np.float32)
        if arr.dtype.kind in "OSU":
            # numpy's fixed-width bytes drop trailing NULs (the object graph ends in one): restore as a tensor
            restored = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key], shape_and_slices=[""],
                                            dtypes=[tf.string])[0].numpy()
            flat = [restored] if isinstance(restored, bytes) else list(np.asarray(restored, object).reshape(-1))
            meta[key] = ["string", list(shape), [_string_digest(v) for v in flat]]
        else:
            numeric[key] = arr
            meta[key] = [dtype, list(shape)]
    out.mkdir(parents=True, exist_ok=True)
    if values:
        np.savez_compressed(out / "expected.npz", **numeric)
    (out / "expected.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _dtype_checkpoint(out: Path) -> None:
    v = {
        "conv_kernel": tf.Variable(RNG.standard_normal((3, 3, 2, 4)).astype(np.float32)),
        "scalar": tf.Variable(np.float64(2.718281828459045)),
        "steps": tf.Variable(np.array([0, 1, -5, 2**40, -(2**62)], np.int64)),
        "counts": tf.Variable(np.arange(6, dtype=np.int32).reshape(2, 3) - 3),
        "half": tf.Variable(np.array([0.5, -1.25, 65504.0, 1e-4], np.float16)),
        "bf16": tf.Variable(tf.constant([1.0, -3.5, 0.0078125], tf.bfloat16)),
        "flags": tf.Variable(np.array([True, False, False, True])),
        "word": tf.Variable("hello, bundle"),
        "words": tf.Variable(tf.constant(["", "a", "longer string \u00fc" * 20])),
        "empty": tf.Variable(np.zeros((0, 3), np.float32)),
    }
    ckpt = tf.train.Checkpoint(**v)
    prefix = ckpt.save(str(out / "ckpt"))
    _expected(prefix, out)


class SmallNet(tf.keras.Model):
    """A Keras subclassed model: conv, BN, dense (the layer types DELG's exports hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = layers.Conv2D(4, 3, padding="same", name="conv")
        self.bn = layers.BatchNormalization(name="bn")
        self.fc = layers.Dense(3, name="fc")

    def call(self, x, training=False):
        x = tf.nn.relu(self.bn(self.conv(x), training=training))
        return self.fc(tf.reduce_mean(x, axis=[1, 2]))


def _randomise(model: tf.Module) -> None:
    """Random values in every variable, so that a wrong mapping shows, scaled so that a deep network's
    activations neither vanish nor overflow: kernels N(0, 1 / fan_in), BN gamma U(0.5, 1), variance
    U(0.5, 1.5), biases, betas and means N(0, 0.1^2)."""
    for var in model.variables:
        shape, name = tuple(var.shape), var.name
        if "kernel" in name:
            values = RNG.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        elif "gamma" in name:
            values = RNG.uniform(0.5, 1.0, shape)
        elif "moving_variance" in name:
            values = RNG.uniform(0.5, 1.5, shape)
        else:
            values = RNG.standard_normal(shape) * 0.1
        var.assign(values.astype(var.dtype.as_numpy_dtype))


def _saved_model(out: Path) -> None:
    net = SmallNet()
    net(tf.zeros((1, 8, 8, 2)))
    _randomise(net)
    tf.saved_model.save(net, str(out))
    (out / "saved_model.pb").unlink()
    for extra in ("assets", "fingerprint.pb"):
        p = out / extra
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
        elif p.is_file():
            p.unlink()
    _expected(str(out / "variables" / "variables"), out)


def _sharded(out: Path) -> None:
    v = {f"w{i}": tf.Variable(RNG.standard_normal((8, 16)).astype(np.float32)) for i in range(5)}
    ckpt = tf.train.Checkpoint(**v)
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=1024)
    prefix = ckpt.write(str(out / "sharded"), options=tf.train.CheckpointOptions(experimental_sharding_callback=policy))
    _expected(prefix, out)


# --- an official-like DELG --------------------------------------------------------------------------


class Bottleneck(tf.keras.Model):
    """DELF's ``_ConvBlock`` / ``_IdentityBlock``: conv2a/bn2a, conv2b/bn2b, conv2c/bn2c (+ shortcut)."""

    def __init__(self, filters, stage, block, strides=1, shortcut=False):
        super().__init__(name=f"res{stage}{block}")
        f1, f2, f3 = filters
        conv, bn = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
        self.conv2a = layers.Conv2D(f1, 1, strides=strides, name=conv + "2a")
        self.bn2a = layers.BatchNormalization(name=bn + "2a")
        self.conv2b = layers.Conv2D(f2, 3, padding="same", name=conv + "2b")
        self.bn2b = layers.BatchNormalization(name=bn + "2b")
        self.conv2c = layers.Conv2D(f3, 1, name=conv + "2c")
        self.bn2c = layers.BatchNormalization(name=bn + "2c")
        self.shortcut = shortcut
        if shortcut:
            self.conv_shortcut = layers.Conv2D(f3, 1, strides=strides, name=conv + "1")
            self.bn_shortcut = layers.BatchNormalization(name=bn + "1")

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn2a(self.conv2a(x), training=training))
        y = tf.nn.relu(self.bn2b(self.conv2b(y), training=training))
        y = self.bn2c(self.conv2c(y), training=training)
        s = self.bn_shortcut(self.conv_shortcut(x), training=training) if self.shortcut else x
        return tf.nn.relu(y + s)


class ResNet50(tf.keras.Model):
    """DELF's ResNet-50 attributes: conv1, bn_conv1, l2a..l2c, l3a..l3d, l4a..l4f, l5a..l5c, embedding_layer."""

    def __init__(self, div=1, embedding_dim=2048):
        super().__init__(name="ResNet50")
        self.conv1 = layers.Conv2D(64 // div, 7, strides=2, padding="same", name="conv1")
        self.bn_conv1 = layers.BatchNormalization(name="bn_conv1")
        self.max_pool = layers.MaxPooling2D(3, strides=2)
        self.subsampling_layer = layers.MaxPooling2D(1, strides=2)
        for stage, (count, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=2):
            for i in range(count):
                w = width // div
                strides = 2 if i == 0 and stage in (3, 4) else 1  # l5a: stride 1 on the subsampled block3
                block = Bottleneck((w, w, 4 * w), stage, LETTERS[i], strides, shortcut=i == 0)
                setattr(self, f"l{stage}{LETTERS[i]}", block)
        self.embedding_layer = layers.Dense(embedding_dim, name="embedding_layer")

    def call(self, x, training=False):
        x = tf.nn.relu(self.bn_conv1(self.conv1(x), training=training))
        x = self.max_pool(x)
        for stage, count in ((2, 3), (3, 4), (4, 6)):
            for i in range(count):
                x = getattr(self, f"l{stage}{LETTERS[i]}")(x, training=training)
        block3 = self.subsampling_layer(x)
        x = block3
        for i in range(3):
            x = getattr(self, f"l5{LETTERS[i]}")(x, training=training)
        gem = tf.pow(tf.reduce_mean(tf.pow(tf.maximum(x, 1e-6), 3.0), axis=[1, 2]), 1.0 / 3.0)
        return block3, self.embedding_layer(gem)


class Attention(tf.keras.Model):
    def __init__(self, dim):
        super().__init__(name="attention")
        self.conv1 = layers.Conv2D(dim, 1, name="attn_conv1")
        self.bn_conv1 = layers.BatchNormalization(name="bn_conv1")
        self.conv2 = layers.Conv2D(1, 1, name="attn_conv2")

    def call(self, x, training=False):
        return tf.nn.softplus(self.conv2(tf.nn.relu(self.bn_conv1(self.conv1(x), training=training))))


class Autoencoder(tf.keras.Model):
    def __init__(self, dim, channels):
        super().__init__(name="autoencoder")
        self.conv1 = layers.Conv2D(dim, 1, name="autoenc_conv1")
        self.conv2 = layers.Conv2D(channels, 1, activation="relu", name="autoenc_conv2")

    def call(self, x):
        code = self.conv1(x)
        return code, self.conv2(code)


class Delg(tf.keras.Model):
    def __init__(self, div=1):
        super().__init__(name="Delg")
        self.backbone = ResNet50(div, 2048 // div + (8 if div > 1 else 0))  # not square when small
        self.attention = Attention(512 // div)
        self.autoencoder = Autoencoder(128 // div, 1024 // div)

    def call(self, x, training=False):
        block3, embedding = self.backbone(x, training=training)
        code, reconstruction = self.autoencoder(block3)
        return block3, self.attention(reconstruction, training=training), code, embedding


class ExtractModule(tf.Module):
    """The exporters' ``_ExtractModule``: the model under ``_model``."""

    def __init__(self, div=1):
        super().__init__()
        self._model = Delg(div)


def _delg(out: Path, div: int, image_hw: tuple[int, int] = (0, 0)) -> ExtractModule:
    module = ExtractModule(div)
    h, w = image_hw if image_hw[0] else (64, 64)
    image = RNG.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    module._model(tf.constant(image))
    _randomise(module)
    if image_hw[0]:
        block3, attention, code, embedding = (np.asarray(t) for t in module._model(tf.constant(image)))
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "io.npz", image=image, block3=block3, attention=attention, local=code, embedding=embedding)
    tf.saved_model.save(module, str(out))
    return module


def _attribute_paths(prefix: str, module: tf.Module) -> dict[str, str]:
    """``{checkpoint key: Python attribute path key}``: the ``_model/variables/N`` keys of a Keras SavedModel
    are ``module._model.variables[N]``; the path is found by walking the modules' attributes."""
    found: dict[int, str] = {}

    def walk(obj, path):
        if isinstance(obj, tf.Variable):
            found.setdefault(id(obj), "/".join(path))
        elif isinstance(obj, tf.Module) and id(obj) not in seen:
            seen.add(id(obj))
            for name, child in vars(obj).items():
                if not name.startswith("_") or name == "_model":
                    walk(child, [*path, name])

    seen: set[int] = set()
    walk(module, [])
    out = {}
    for key, _ in tf.train.list_variables(prefix):
        parts = key.split("/")
        if parts[:2] == ["_model", "variables"]:
            out[key] = found[id(module._model.variables[int(parts[2])])] + "/.ATTRIBUTES/VARIABLE_VALUE"
    return out


def _official_like(out: Path) -> None:
    module = _delg(out, div=64)
    (out / "saved_model.pb").unlink()
    for extra in ("assets", "fingerprint.pb"):
        p = out / extra
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
        elif p.is_file():
            p.unlink()
    prefix = str(out / "variables" / "variables")
    (out / "paths.json").write_text(json.dumps(_attribute_paths(prefix, module), indent=1, sort_keys=True) + "\n")
    _expected(prefix, out, values=False)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _keras_resnet_names(out: Path) -> None:
    """Layer and weight names (with shapes) of ``tf.keras.applications.ResNet50(include_top=False)``'s h5."""
    import tempfile

    import h5py

    model = tf.keras.applications.ResNet50(weights=None, include_top=False)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_weights(f"{tmp}/notop.h5")
        with h5py.File(f"{tmp}/notop.h5", "r") as f:
            layers_ = [_text(n) for n in f.attrs["layer_names"]]
            weights = {n: [[_text(w), list(f[n][_text(w)].shape)] for w in f[n].attrs["weight_names"]]
                       for n in layers_}
    eps = {lay.name: lay.epsilon for lay in model.layers if hasattr(lay, "epsilon")}
    record = {"tensorflow": tf.__version__, "layer_names": layers_,
              "weights": {n: w for n, w in weights.items() if w}, "bn_epsilon": sorted(set(eps.values()))}
    out.write_text(json.dumps(record, indent=0) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    fx = sub.add_parser("fixtures")
    fx.add_argument("dir", type=Path)
    dg = sub.add_parser("delg")
    dg.add_argument("out", type=Path)
    dg.add_argument("--width-div", type=int, default=1)
    dg.add_argument("--image", type=int, nargs=2, default=(161, 194), metavar=("H", "W"))
    kn = sub.add_parser("keras-resnet-names")
    kn.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "keras-resnet-names":
        _keras_resnet_names(args.out)
    elif args.cmd == "fixtures":
        _dtype_checkpoint(args.dir / "ckpt")
        _saved_model(args.dir / "saved_model")
        _sharded(args.dir / "sharded")
        _official_like(args.dir / "official_like")
    else:
        _delg(args.out, args.width_div, tuple(args.image))


if __name__ == "__main__":
    main()
