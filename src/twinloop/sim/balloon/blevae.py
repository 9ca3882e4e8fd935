"""BLE's wind model: the decoder of its ERA5-trained VAE, read from the installed BLE wheel.

The Balloon Learning Environment (BLE 1.0.1, Apache-2.0) ships the decoder of its generative
wind model as ``balloon_learning_environment/models/offlineskies22_decoder.msgpack`` (26 MB)
inside its wheel [B20]: flax parameters of four dense layers, 64 -> 1000 -> 1000 -> 1000
(ReLU after each) -> 4410 = a 7 x 7 stream function for each of 90 (pressure, time) slices.
:mod:`~.wind` turns that stream function into winds the way BLE does.

The wheel installs on Python 3.11 without its dependencies (which do not), and it is not a
dependency of twinloop (its metadata pulls TensorFlow, JAX and Dopamine)::

    pip install --no-deps balloon-learning-environment==1.0.1

This module finds the file through ``importlib.metadata`` without importing BLE, decodes the
msgpack itself (``msgpack``; flax stores each array as an extension object holding
``(shape, dtype name, bytes)``) and never downloads anything. The decoder runs in the
kernel (:func:`decode`), so every env of a vector env decodes its own latents at reset.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.core.jit import njit

#: The distribution and file that hold the weights.
WHEEL = "balloon-learning-environment"
WHEEL_VERSION = "1.0.1"
WEIGHTS_FILE = "balloon_learning_environment/models/offlineskies22_decoder.msgpack"
#: Latent size and the (inputs, outputs) of the four dense layers [B20].
N_LATENT = 64
LAYERS = ((64, 1000), (1000, 1000), (1000, 1000), (1000, 4410))
#: Floats of the flat weight vector: per layer the kernel (inputs x outputs), then the bias.
N_WEIGHTS = sum(n_in * n_out + n_out for n_in, n_out in LAYERS)
#: What to run when the wheel is missing.
INSTALL_HINT = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION}"


class BleWheelNotFound(ImportError):
    """The BLE wheel that holds the decoder weights is not installed (or lacks the file)."""


def weights_path() -> Path:
    """Path of the decoder weights inside the installed BLE wheel.

    Raises:
        BleWheelNotFound: The wheel is not installed, or has no weights file.
    """
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise BleWheelNotFound(
            f'wind source "ble-vae" reads the decoder weights of BLE {WHEEL_VERSION} from its '
            f"installed wheel, which was not found. Install the wheel without its "
            f"dependencies (they do not install on Python >= 3.11; twinloop needs none of "
            f"them and never downloads at run time): {INSTALL_HINT}"
        ) from None
    path = Path(str(dist.locate_file(WEIGHTS_FILE)))
    if not path.is_file():
        raise BleWheelNotFound(
            f"{WHEEL} {dist.version} is installed but has no {WEIGHTS_FILE}; "
            f"install version {WHEEL_VERSION}: {INSTALL_HINT}"
        )
    return path


def available() -> bool:
    """Whether the BLE wheel with the decoder weights and msgpack to read it are installed."""
    try:
        weights_path()
    except BleWheelNotFound:
        return False
    return importlib.util.find_spec("msgpack") is not None


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError:
        raise ImportError(
            'wind source "ble-vae" reads BLE\'s decoder weights with msgpack, which is not '
            "installed: pip install 'msgpack>=1.0'"
        ) from None
    return msgpack


def _array(ext: object) -> np.ndarray:
    msgpack = _msgpack()

    shape, dtype, buf = msgpack.unpackb(ext.data, raw=False)  # type: ignore[attr-defined]
    return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)


@functools.cache
def load_weights() -> np.ndarray:
    """The decoder's weights as one read-only float32 vector (layer by layer, kernel, bias).

    Raises:
        BleWheelNotFound: The wheel is not installed.
        ImportError: msgpack is not installed.
        ValueError: The file does not hold the four layers of the expected shapes.
    """
    path = weights_path()
    msgpack = _msgpack()
    tree = msgpack.unpackb(path.read_bytes(), raw=False, ext_hook=msgpack.ExtType)
    params = tree.get("params", {}) if isinstance(tree, dict) else {}
    parts = []
    for n, (n_in, n_out) in enumerate(LAYERS):
        layer = params.get(f"Dense_{n}", {})
        if not {"kernel", "bias"} <= set(layer):
            raise ValueError(f"{path}: no Dense_{n} kernel and bias")
        kernel, bias = _array(layer["kernel"]), _array(layer["bias"])
        if kernel.shape != (n_in, n_out) or bias.shape != (n_out,):
            raise ValueError(
                f"{path}: Dense_{n} has kernel {kernel.shape} and bias {bias.shape}, "
                f"expected ({n_in}, {n_out}) and ({n_out},)"
            )
        parts += [kernel.astype(np.float32).ravel(), bias.astype(np.float32)]
    flat = np.concatenate(parts)
    flat.flags.writeable = False
    return flat


def no_weights() -> np.ndarray:
    """The weights argument of kernels when the wind source is not BLE's VAE."""
    return np.zeros(1, dtype=np.float32)


@njit
def _dense(
    x: np.ndarray, n_in: int, n_out: int, w: np.ndarray, off: int, relu: bool, out: np.ndarray
) -> int:
    """``out = x @ kernel + bias`` (ReLU if asked) of the layer at ``w[off:]``; next offset."""
    bias = off + n_in * n_out
    for o in range(n_out):
        out[o] = w[bias + o]
    for a in range(n_in):
        xa = x[a]
        if xa == 0.0:  # half the inputs after a ReLU
            continue
        r = off + a * n_out
        for o in range(n_out):
            out[o] += xa * w[r + o]
    if relu:
        for o in range(n_out):
            out[o] = max(out[o], 0.0)
    return bias + n_out


@njit
def decode(z: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """Run the decoder's dense layers on latent ``z``: the 4410 stream-function values.

    ``out`` gets them in the decoder's order (7 x 7 x 90, C order). Sums are in float64 (BLE
    runs float32), so values agree with BLE's to about 1e-6 of their size.
    """
    h1 = np.empty(LAYERS[0][1])
    h2 = np.empty(LAYERS[1][1])
    off = _dense(z, LAYERS[0][0], LAYERS[0][1], w, 0, True, h1)
    off = _dense(h1, LAYERS[1][0], LAYERS[1][1], w, off, True, h2)
    off = _dense(h2, LAYERS[2][0], LAYERS[2][1], w, off, True, h1)
    _dense(h1, LAYERS[3][0], LAYERS[3][1], w, off, False, out)
