"""The numba cache never reads a folder another local user could have written.

numba unpickles its cache files, so a cache in a shared temp dir that another user created or
can write would let them run code in this process.
"""

from __future__ import annotations

import os
import stat

import pytest

from twinloop.core import jit


@pytest.fixture
def tmpdir_is(monkeypatch, tmp_path):
    monkeypatch.setattr(jit.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(jit.tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_fallback_folder_is_created_private(tmpdir_is) -> None:
    folder = jit._private_fallback()
    assert folder == tmpdir_is / f"twinloop-numba-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_folder_others_can_write_is_not_used(tmpdir_is) -> None:
    planted = tmpdir_is / f"twinloop-numba-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    folder = jit._private_fallback()
    assert folder != planted and folder.parent == tmpdir_is
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="creating another user's folder needs root")
def test_a_folder_another_user_owns_is_not_used(tmpdir_is) -> None:
    planted = tmpdir_is / f"twinloop-numba-{os.getuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, 4242, 4242)
    assert jit._private_fallback() != planted


def test_a_symlink_in_its_place_is_not_followed(tmpdir_is) -> None:
    elsewhere = tmpdir_is / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmpdir_is / f"twinloop-numba-{os.getuid()}").symlink_to(elsewhere)
    assert jit._private_fallback() not in (elsewhere, tmpdir_is / f"twinloop-numba-{os.getuid()}")
