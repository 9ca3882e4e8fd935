"""Shared fixtures: every registered env id, and helpers to compare nested results exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import twinloop

ENV_IDS = list(twinloop.registry)


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Assert two nested results (dicts, arrays, scalars) are identical, dtype-insensitive."""
    if isinstance(a, dict) or isinstance(b, dict):
        assert isinstance(a, dict) and isinstance(b, dict), f"{path}: {type(a)} vs {type(b)}"
        assert set(a) == set(b), f"{path}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
        return
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        assert isinstance(a, list | tuple) and isinstance(b, list | tuple), path
        assert len(a) == len(b), f"{path}: lengths {len(a)} vs {len(b)}"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{k}]")
        return
    if isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape, path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{k}]")
        return
    if a is None or b is None:
        assert a is None and b is None, f"{path}: {a!r} vs {b!r}"
        return
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)


@pytest.fixture(params=ENV_IDS)
def env_id(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels() -> None:
    """Compile the numba kernels once, in this process, before any test runs.

    A clean checkout starts with an empty numba cache (it is keyed on the package's source),
    and the STEM kernels take ~2 minutes to compile. Tests that start twinloop in a
    subprocess (``twinloop run --record``, a microscope twin, a flight controller twin) must
    not pay that inside their own timeouts; once this fixture has run they load the kernels
    from the on-disk cache.
    """
    from twinloop.datasets import RecordVectorEpisodes

    for env_id in ENV_IDS:
        env = twinloop.make(env_id)
        env.reset(seed=0)
        env.step(env.action_space.sample())
        env.close()
        vec = twinloop.make_vec(env_id, 2)
        vec.reset(seed=0)
        vec.step(vec.action_space.sample())
        vec.close()
    image = twinloop.make("twinloop/StemSteer-v0", backend="sim-image")
    image.reset(seed=0)
    image.step(image.action_space.sample())
    image.close()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for capture in ("inline", "companion"):  # the companion compiles in its own process
            rec = RecordVectorEpisodes(
                twinloop.make_vec("twinloop/StemSteer-v0", 2),
                f"{tmp}/{capture}/w-v0",
                capture=capture,
            )
            rec.reset(seed=0)
            for _ in range(300):
                _, _, term, trunc, _ = rec.step(rec.action_space.sample())
                if (term | trunc).any():
                    break
            rec.close()
