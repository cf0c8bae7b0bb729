"""Build small TensorFlow models and import them, in a process of their own.

Run by ``test_import_tensorflow.py`` as ``python tensorflow_models.py OUT STORE``: TensorFlow
is imported here, never in the test process (an xdist worker goes on to run other test files,
and TensorFlow's thread pools and log handlers would stay with it). Writes under OUT:

- ``classifier.keras`` and ``classifier.h5``: one functional Keras model with two inputs, an
  NHWC image and a vector; ``exported/``: the same model as a SavedModel (``model.export``);
- ``module/``: a ``tf.Module`` SavedModel with a float and an int64 input and two named outputs;
- ``sequential.keras``: a one-input ``keras.Sequential``; ``dict.keras``: a functional model
  whose outputs are a dict;
- ``lambda.keras``, ``lambda.h5``: a model with a Python ``Lambda`` layer, which an import
  must refuse; ``fixed/``: a SavedModel whose batch dimension is fixed, refused too;
  ``embedding.keras``: a table of 3 rows, which random indices from [0, 10) overrun;
- ``expected.npz``: fixed inputs and TensorFlow's outputs for them, ``MODEL/TENSOR`` keys;
- ``report.json``: for every other file, the manifest ``import_model`` wrote into STORE, or
  the error it raised.

``classifier.keras`` is imported with the command a user types, ``torchferry import``, whose
output is this script's (run here rather than as a process of its own, which would spend
seconds importing TensorFlow again).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf

from torchferry import cli
from torchferry.errors import TorchferryError
from torchferry.importers import import_model


def classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    pixels = keras.Input((8, 8, 1), name="pixels")
    extra = keras.Input((3,), name="extra")
    image = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, activation="relu")(pixels)
    )
    joined = keras.layers.Concatenate()([image, keras.layers.Dense(4, activation="tanh")(extra)])
    probs = keras.layers.Dense(5, activation="softmax", name="probs")(joined)
    return keras.Model([pixels, extra], probs)


class FixedBatch(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


class Module(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weights = tf.Variable(np.arange(8, dtype=np.float32).reshape(4, 2) / 10)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32, name="a"),
            tf.TensorSpec([None], tf.int64, name="b"),
        ]
    )
    def __call__(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.matmul(a, self.weights) + 1.0, "z": b * 3 + 1}


def main(out: Path, store: Path) -> None:
    rng = np.random.default_rng(0)
    model = classifier()
    model.save(out / "classifier.keras")
    model.save(out / "classifier.h5")
    model.export(str(out / "exported"), verbose=False)
    module = Module()
    tf.saved_model.save(module, str(out / "module"), signatures=module.__call__)
    square = keras.layers.Lambda(lambda x: x * x)
    entry = keras.Input((2,), name="x")
    keras.Model(entry, square(entry)).save(out / "lambda.keras")
    keras.Model(entry, square(entry)).save(out / "lambda.h5")
    sequential = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu"),
            keras.layers.Dense(2, name="scores"),
        ]
    )
    sequential.save(out / "sequential.keras")
    fixed = FixedBatch()
    tf.saved_model.save(fixed, str(out / "fixed"), signatures=fixed.__call__)
    ids = keras.Input((2,), dtype="int64", name="ids")
    table = keras.layers.Flatten()(keras.layers.Embedding(3, 2)(ids))
    keras.Model(ids, table).save(out / "embedding.keras")
    row = keras.Input((4,), name="row")
    first, second = keras.layers.Dense(2, name="first"), keras.layers.Dense(3, name="second")
    keras.Model(row, {"second": second(row), "first": first(row)}).save(out / "dict.keras")

    pixels = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    extra = rng.normal(size=(2, 3)).astype(np.float32)
    a = rng.normal(size=(2, 4)).astype(np.float32)
    b = np.array([4, -7], dtype=np.int64)
    outputs = module(a, b)
    np.savez(
        out / "expected.npz",
        **{"classifier/pixels": pixels, "classifier/extra": extra},
        **{"classifier/probs": model([pixels, extra], training=False).numpy()},
        **{"module/a": a, "module/b": b},
        **{f"module/{name}": tensor.numpy() for name, tensor in outputs.items()},
    )

    command = ["import", str(out / "classifier.keras"), "--name", "keras_classifier"]
    if cli.main([*command, "--store", str(store)]) != 0:
        raise SystemExit(f"torchferry {' '.join(command)} failed")
    report: dict[str, object] = {}
    for name, path in {
        "keras_h5": "classifier.h5",
        "keras_export": "exported",
        "tf_module": "module",
        "sequential": "sequential.keras",
        "dict_outputs": "dict.keras",
        "lambda": "lambda.keras",
        "lambda_h5": "lambda.h5",
        "fixed": "fixed",
        "embedding": "embedding.keras",
    }.items():
        try:
            archive = import_model(out / path, name=name, store=store)
            report[name] = json.loads(archive.manifest.to_json())
        except TorchferryError as exc:
            report[name] = {"error": exc.message}
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
