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
