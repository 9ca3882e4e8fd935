"""twinloop: fast simulators and real instruments behind one Gymnasium API.

``twinloop.make(id, backend=...)`` builds a single env, ``twinloop.make_vec(id, n_envs)`` a
kernel-batched vector env; ``twinloop.registry`` lists every id. Importing this package
registers every id with Gymnasium and imports no simulator, JAX, MuJoCo or vendor SDK.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from twinloop import envs as _envs  # noqa: F401  (registers the table)
from twinloop.core.registry import make, make_config, make_vec, registry, spec

try:
    __version__ = version("twinloop")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "make", "make_config", "make_vec", "registry", "spec"]
