"""twinloop.datasets.export: LeRobot (v3.0 folder) and robomimic (HDF5) exports.

Every exported value is checked against what :class:`twinloop.datasets.Dataset` reads: the
robomimic file with h5py, the LeRobot files with pyarrow/json (fast), and the LeRobot folder
once more through lerobot 0.4.4's own ``LeRobotDataset`` in a venv of its own (slow).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest

import twinloop
from twinloop.cli import main
from twinloop.datasets import DatasetExistsError, RecordEpisodes, open_dataset
from twinloop.datasets.export import export_lerobot, export_robomimic

from .conftest import ToyEnv, run_episodes


class RichEnv(gym.Env):
    """Grey image, a 2-D float leaf, a Tuple with a scalar, text; Dict actions; applied command.

    The device clips ``move`` to +-0.5 and reports it with ``mode`` as ``applied_command``
    (3 numbers: another space than the action's), so requested and applied actions differ.
    Success (reaching the origin) terminates; otherwise a time limit truncates.
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self) -> None:  # noqa: D107
        self.observation_space = gym.spaces.Dict(
            {
                "cam": gym.spaces.Box(0, 255, (16, 12), np.uint8),
                "grid": gym.spaces.Box(-10.0, 10.0, (2, 3), np.float64),
                "pair": gym.spaces.Tuple(
                    (gym.spaces.Discrete(5), gym.spaces.Box(-2.0, 2.0, (2,), np.float32))
                ),
                "label": gym.spaces.Text(max_length=6),
            }
        )
        self.action_space = gym.spaces.Dict(
            {"move": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "mode": gym.spaces.Discrete(3)}
        )
        self._t = 0
        self._len = 0
        self._x = np.zeros(2)

    def _obs(self) -> dict[str, Any]:
        cam = ((np.arange(16 * 12).reshape(16, 12) * 3 + self._t * 29) % 256).astype(np.uint8)
        grid = np.outer([1.0, -1.0], [self._x[0], self._x[1], self._t / 7])
        pos = np.clip(self._x, -2, 2).astype(np.float32)
        return {"cam": cam, "grid": grid, "pair": (self._t % 5, pos), "label": f"L{self._t}"}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._len = int(self.np_random.integers(3, 9))
        self._x = self.np_random.uniform(-0.6, 0.6, 2)
        return self._obs(), {"is_success": False}

    def step(self, action):
        self._t += 1
        move = np.clip(np.asarray(action["move"], np.float64), -0.5, 0.5)
        self._x = self._x + 0.5 * move
        success = bool(np.linalg.norm(self._x) < 0.35)
        truncated = self._t >= self._len and not success
        info = {
            "applied_command": np.array([move[0], move[1], float(action["mode"])]),
            "is_success": success,
        }
        return self._obs(), -float(np.linalg.norm(self._x)), success, truncated, info


def _record(env: gym.Env, directory: Path, n: int, seed: int, **kw: Any) -> Path:
    rec = RecordEpisodes(env, directory, **kw)
    run_episodes(rec, n, seed=seed, action_seed=seed)
    rec.close()
    return directory


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record(RichEnv(), tmp_path_factory.mktemp("rich") / "ns" / "rich-v0", 12, seed=5)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record(ToyEnv(), tmp_path_factory.mktemp("toy") / "ns" / "toy-v0", 5, seed=11)


@pytest.fixture(scope="module")
def stem_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = twinloop.make("twinloop/StemSteer-v0", max_steps=6)
    return _record(
        env, tmp_path_factory.mktemp("stem") / "ns" / "stem-v0", 4, seed=2, tags={"operator": "ana"}
    )


def _leaf(value: Any, key: tuple) -> Any:
    for part in key:
        value = value[part]
    return value


def _flat_actions(ds: Any, ep: Any) -> np.ndarray:
    fields = [f for f in ds.fields if f.source == "action"]
    cols = [np.asarray(_leaf(ep.actions, f.key)).reshape(len(ep), -1) for f in fields]
    return np.concatenate(cols, axis=1)


def _mask(h5: h5py.File, key: str) -> set[str]:
    return {s.decode() for s in h5["mask"][key][()]}


# --- robomimic --------------------------------------------------------------------------------
def test_robomimic_holds_every_value_of_the_dataset(rich_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rich.hdf5"
    calls: list[tuple[int, int]] = []
    result = export_robomimic(rich_dir, out, progress=lambda d, t: calls.append((d, t)))
    ds = open_dataset(rich_dir)
    n = len(ds)
    assert calls == [(i + 1, n) for i in range(n)]
    assert result["episodes"] == n and result["steps"] == ds.total_steps
    obs_fields = [f for f in ds.fields if f.source == "obs"]
    keys = {("cam",): "cam", ("grid",): "grid", ("pair", 0): "pair_0", ("pair", 1): "pair_1"}
    keys[("label",)] = "label"
    assert sorted(result["obs_keys"]) == sorted(keys.values())
    with h5py.File(out, "r") as h5:
        data = h5["data"]
        assert sorted(data) == sorted(f"demo_{i}" for i in range(n))  # nothing else in data
        assert data.attrs["total"] == ds.total_steps
        prov = json.loads(data.attrs["twinloop"])
        assert prov["actions"].startswith("requested") and prov["applied_commands"].startswith(
            "applied"
        )
        terminated, truncated, success = set(), set(), set()
        for i, ep in enumerate(ds.iterate_episodes()):
            g = data[f"demo_{i}"]
            L = len(ep)
            assert g.attrs["num_samples"] == L and g.attrs["episode_id"] == ep.id
            assert g.attrs["seed"] == ep.metadata["seed"]
            np.testing.assert_array_equal(g["actions"][()], _flat_actions(ds, ep))
            assert g["actions"].attrs["kind"] == "requested"
            layout = json.loads(g["actions"].attrs["layout"])
            assert [(e["name"], e["start"], e["stop"]) for e in layout] == [
                ("mode", 0, 1),
                ("move", 1, 3),
            ] or [(e["name"], e["start"], e["stop"]) for e in layout] == [
                ("move", 0, 2),
                ("mode", 2, 3),
            ]
            applied = g["applied_commands"][()]
            np.testing.assert_array_equal(applied, ep.infos["applied_command"][1:])
            assert g["applied_commands"].attrs["kind"] == "applied"
            # the device clipped: what it applied is not what was asked for, somewhere
            move = np.asarray(ep.actions["move"], np.float64)
            np.testing.assert_array_equal(applied[:, :2], np.clip(move, -0.5, 0.5))
            np.testing.assert_array_equal(g["rewards"][()], ep.rewards)
            np.testing.assert_array_equal(g["dones"][()], ep.terminations.astype(np.int64))
            np.testing.assert_array_equal(g["terminations"][()], ep.terminations)
            np.testing.assert_array_equal(g["truncations"][()], ep.truncations)
            for f in obs_fields:
                key = keys[f.key]
                value = _leaf(ep.observations, f.key)
                for group, rows in (("obs", slice(0, L)), ("next_obs", slice(1, L + 1))):
                    got = g[group][key][()]
                    if f.text:
                        assert [s.decode() for s in got] == list(value[rows])
                    else:
                        want = np.asarray(value)[rows]
                        want = want[:, None] if want.ndim == 1 else want
                        assert got.dtype == want.dtype
                        np.testing.assert_array_equal(got, want)
            assert g["obs"]["cam"].compression == "gzip"
            if ep.terminations[-1]:
                terminated.add(f"demo_{i}")
            if ep.truncations[-1]:
                truncated.add(f"demo_{i}")
            if ep.infos["is_success"][-1]:
                success.add(f"demo_{i}")
        assert terminated and truncated, "the fixture should end episodes both ways"
        assert _mask(h5, "terminated") == terminated
        assert _mask(h5, "truncated") == truncated
        assert _mask(h5, "success") == success == terminated
        train, valid = _mask(h5, "train"), _mask(h5, "valid")
        assert not train & valid and train | valid == {f"demo_{i}" for i in range(n)}
        assert len(valid) == round(0.1 * n)
        assert result["filter_keys"]["valid"] == len(valid)


def test_robomimic_env_args_rebuild_the_env_and_masks_name_backend_and_tags(
    stem_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stem.hdf5"
    export_robomimic(stem_dir, out, valid_fraction=0.5)
    ds = open_dataset(stem_dir)
    with h5py.File(out, "r") as h5:
        env_args = json.loads(h5["data"].attrs["env_args"])
        assert env_args["env_name"] == "twinloop/StemSteer-v0" and env_args["type"] == 2
        env = gym.make(env_args["env_name"], **env_args["env_kwargs"])
        assert env.unwrapped.config.task.max_steps == 6
        from twinloop.core.config import to_dict

        recorded = {
            k: v for k, v in ds.metadata["twinloop"]["env_config"].items() if k != "__class__"
        }
        assert to_dict(env.unwrapped.config) == recorded
        env.close()
        demos = {f"demo_{i}" for i in range(len(ds))}
        assert _mask(h5, "backend_sim") == demos
        assert _mask(h5, "tag_operator_ana") == demos
        assert len(_mask(h5, "valid")) == 2
        assert h5["data/demo_0/obs/observations"].shape == (len(ds[0]), 12)
        np.testing.assert_array_equal(
            h5["data/demo_0/applied_commands"][()], ds[0].infos["applied_command"][1:]
        )


def test_robomimic_split_is_deterministic_and_follows_the_seed(
    rich_dir: Path, tmp_path: Path
) -> None:
    def valid(seed: int, fraction: float = 0.25) -> set[int]:
        out = tmp_path / f"s{seed}-{fraction}.hdf5"
        export_robomimic(rich_dir, out, valid_fraction=fraction, split_seed=seed, overwrite=True)
        with h5py.File(out, "r") as h5:
            if "valid" not in h5["mask"]:
                return set()
            return {int(h5["data"][d].attrs["episode_id"]) for d in _mask(h5, "valid")}

    a, b = valid(0), valid(0)
    assert a == b and len(a) == 3
    assert any(valid(s) != a for s in range(1, 6))
    assert valid(0, 0.0) == set()
    with pytest.raises(ValueError, match="valid_fraction"):
        export_robomimic(rich_dir, tmp_path / "bad.hdf5", valid_fraction=1.0)


def test_robomimic_exports_a_filtered_view(rich_dir: Path, tmp_path: Path) -> None:
    ds = open_dataset(rich_dir)
    view = ds.filter(truncated=True)
    assert 0 < len(view) < len(ds)
    out = tmp_path / "view.hdf5"
    export_robomimic(view, out)
    with h5py.File(out, "r") as h5:
        ids = [int(h5["data"][f"demo_{i}"].attrs["episode_id"]) for i in range(len(view))]
        assert len(h5["data"]) == len(view)
        assert _mask(h5, "terminated") == set()
    assert ids == [m["id"] for m in view.episode_metadata]
    with pytest.raises(ValueError, match="no readable episodes"):
        export_robomimic(ds.filter(lambda m: False), tmp_path / "none.hdf5")
    assert not (tmp_path / "none.hdf5").exists()


# --- output safety ----------------------------------------------------------------------------
def _formats() -> list[Any]:
    return [
        pytest.param(export_robomimic, "out.hdf5", id="robomimic"),
        pytest.param(export_lerobot, "out", id="lerobot"),
    ]


@pytest.mark.parametrize(("export", "name"), _formats())
def test_export_refuses_to_overwrite_and_never_leaves_half_an_export(
    export: Any, name: str, toy_dir: Path, tmp_path: Path
) -> None:
    if export is export_lerobot:
        pytest.importorskip("pyarrow")
    out = tmp_path / name
    export(toy_dir, out)
    before = sorted(p.name for p in tmp_path.iterdir())
    stamp = out.stat().st_mtime_ns
    with pytest.raises(DatasetExistsError, match="overwrite"):
        export(toy_dir, out)

    def fail(done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        export(toy_dir, out, overwrite=True, progress=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial files left
    assert out.stat().st_mtime_ns == stamp  # the old export is untouched
    fresh = tmp_path / f"fresh-{name}"
    with pytest.raises(RuntimeError, match="interrupted"):
        export(toy_dir, fresh, progress=fail)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    export(toy_dir, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- LeRobot (files read with pyarrow) --------------------------------------------------------
def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def test_lerobot_files_hold_every_value_of_the_dataset(rich_dir: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "lr"
    result = export_lerobot(rich_dir, out, fps=4)
    ds = open_dataset(rich_dir)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 4
    assert info["total_episodes"] == len(ds) == result["episodes"]
    assert info["total_frames"] == ds.total_steps == result["frames"]
    assert info["video_path"] is None and info["robot_type"] is None  # no env id recorded
    feats = info["features"]
    assert feats["observation.images.cam"] == {
        "dtype": "image",
        "shape": [16, 12, 3],
        "names": ["height", "width", "channels"],
    }
    assert feats["observation.grid"]["shape"] == [2, 3]
    assert feats["observation.pair.0"] == {"dtype": "int64", "shape": [1], "names": None}
    assert feats["text.label"]["dtype"] == "string"
    assert feats["action"]["shape"] == [3] and feats["action"]["dtype"] == "float64"
    assert feats["applied_command"]["shape"] == [3]
    assert info["twinloop"]["action"].startswith("requested")
    assert info["twinloop"]["applied_command"].startswith("applied")
    assert list(feats)[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    table = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert table.column_names == list(feats)
    hf = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.images.cam"] == {"_type": "Image"}
    assert hf["observation.grid"]["_type"] == "Array2D"
    assert table.schema.field("observation.pair.1").type == pa.list_(pa.float32(), 2)
    cols = table.to_pydict()
    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    erows = episodes.to_pylist()
    tasks = pd.read_parquet(out / "meta" / "tasks.parquet")
    assert list(tasks.index) == ["ns/rich-v0"] and list(tasks["task_index"]) == [0]
    start = 0
    for e, ep in enumerate(ds.iterate_episodes()):
        L = len(ep)
        row = erows[e]
        assert (row["episode_index"], row["length"]) == (e, L)
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, start + L)
        assert row["twinloop/episode_id"] == ep.id and row["tasks"] == ["ns/rich-v0"]
        sl = slice(start, start + L)
        assert cols["episode_index"][sl] == [e] * L
        assert cols["frame_index"][sl] == list(range(L))
        assert cols["index"][sl] == list(range(start, start + L))
        assert cols["task_index"][sl] == [0] * L
        np.testing.assert_array_equal(cols["timestamp"][sl], (np.arange(L) / 4).astype(np.float32))
        cams = np.asarray(ep.observations["cam"])
        for t in range(L):
            img = _decode_png(cols["observation.images.cam"][start + t]["bytes"])
            np.testing.assert_array_equal(img, np.repeat(cams[t][:, :, None], 3, axis=2))
        np.testing.assert_array_equal(
            np.asarray(cols["observation.grid"][sl]), np.asarray(ep.observations["grid"])[:L]
        )
        np.testing.assert_array_equal(
            cols["observation.pair.0"][sl], ep.observations["pair"][0][:L]
        )
        np.testing.assert_array_equal(
            np.asarray(cols["observation.pair.1"][sl], np.float32), ep.observations["pair"][1][:L]
        )
        assert cols["text.label"][sl] == list(ep.observations["label"][:L])
        np.testing.assert_array_equal(np.asarray(cols["action"][sl]), _flat_actions(ds, ep))
        np.testing.assert_array_equal(
            np.asarray(cols["applied_command"][sl]), ep.infos["applied_command"][1:]
        )
        np.testing.assert_array_equal(cols["next.reward"][sl], ep.rewards)
        np.testing.assert_array_equal(cols["next.terminated"][sl], ep.terminations)
        np.testing.assert_array_equal(cols["next.truncated"][sl], ep.truncations)
        np.testing.assert_array_equal(cols["next.done"][sl], ep.terminations | ep.truncations)
        np.testing.assert_array_equal(cols["next.success"][sl], ep.infos["is_success"][1:])
        start += L
    stats = json.loads((out / "meta" / "stats.json").read_text())
    grid = np.asarray(cols["observation.grid"])
    np.testing.assert_allclose(stats["observation.grid"]["mean"], grid.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["observation.grid"]["std"], grid.std(axis=0), rtol=1e-9)
    assert stats["observation.grid"]["min"] == grid.min(axis=0).tolist()
    assert stats["observation.grid"]["count"] == [ds.total_steps]
    cam = np.stack([_decode_png(c["bytes"]) for c in cols["observation.images.cam"]])
    np.testing.assert_allclose(
        np.asarray(stats["observation.images.cam"]["mean"]).reshape(3),
        cam.reshape(-1, 3).mean(axis=0) / 255,
        rtol=1e-12,
    )
    assert np.asarray(stats["observation.images.cam"]["q50"]).shape == (3, 1, 1)
    assert "text.label" not in stats


def test_lerobot_flat_observation_names_and_task_field(
    stem_dir: Path, toy_dir: Path, tmp_path: Path
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "stem"
    export_lerobot(stem_dir, out)
    info = json.loads((out / "meta" / "info.json").read_text())
    state = info["features"]["observation.state"]
    assert state["shape"] == [12] and state["names"][:2] == [
        "si_position_angstrom.0",
        "si_position_angstrom.1",
    ]
    assert info["robot_type"] == "twinloop/StemSteer-v0" and info["fps"] == 1
    assert list(pd.read_parquet(out / "meta" / "tasks.parquet").index) == ["twinloop/StemSteer-v0"]

    out = tmp_path / "toy"
    export_lerobot(toy_dir, out, task_field="note")
    ds = open_dataset(toy_dir)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert "text.note" not in info["features"]
    tasks = pd.read_parquet(out / "meta" / "tasks.parquet")
    notes = [n for ep in ds.iterate_episodes() for n in ep.observations["note"][: len(ep)]]
    assert sorted(tasks.index) == sorted(set(notes)) and info["total_tasks"] == len(tasks)
    index = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")["task_index"]
    assert [tasks.index[i] for i in index.to_pylist()] == notes
    with pytest.raises(ValueError, match="task_field 'state' is not a text observation leaf"):
        export_lerobot(toy_dir, tmp_path / "bad", task_field="state")
    with pytest.raises(ValueError, match=r"no text observation leaf 'goal'.*text leaves: note"):
        export_lerobot(toy_dir, tmp_path / "bad", task_field="goal")
    assert not (tmp_path / "bad").exists()


def test_lerobot_splits_data_files_by_size(toy_dir: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "small-files"
    export_lerobot(toy_dir, out, data_file_size_mb=0.001)
    files = sorted((out / "data" / "chunk-000").glob("*.parquet"))
    ds = open_dataset(toy_dir)
    assert len(files) == len(ds)  # one episode per file when each exceeds the limit
    rows = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    for e, (row, path) in enumerate(zip(rows, files, strict=True)):
        assert row["data/file_index"] == e and path.name == f"file-{e:03d}.parquet"
        assert pq.read_table(path).num_rows == row["length"]


# --- command line -----------------------------------------------------------------------------
def test_cli_exports_and_reports_errors(
    toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "toy.hdf5"
    argv = ["data", "export", str(toy_dir), "--format", "robomimic", str(out), "--quiet"]
    assert main([*argv, "--valid-fraction", "0.4"]) == 0
    printed = capsys.readouterr().out
    assert "exported 5 episodes" in printed and "train (3), valid (2)" in printed
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert main([*argv, "--overwrite", "--fps", "3"]) == 2
    assert "--fps cannot be used with --format robomimic" in capsys.readouterr().err
    missing = ["data", "export", str(tmp_path / "nope"), "--format", "robomimic", str(out)]
    assert main([*missing, "--overwrite", "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_exports_lerobot(
    toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "toy-lr"
    argv = ["data", "export", str(toy_dir), "--format", "lerobot", str(out), "--quiet"]
    assert main([*argv, "--task", "push", "--fps", "5"]) == 0
    assert "exported 5 episodes" in capsys.readouterr().out
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["fps"] == 5 and info["total_frames"] == open_dataset(toy_dir).total_steps
    assert main([*argv, "--valid-fraction", "0.2"]) == 2


# --- LeRobot, read by lerobot 0.4.4 itself (slow: builds a venv once) --------------------------
LEROBOT_VERSION = "0.4.4"
# lerobot 0.4.4 pins torch<2.11 / torchvision<0.26, for which PyPI has only multi-GB CUDA
# builds; its dataset class does not care which torch it runs on, so the venv takes a
# torch/torchvision pair that installs here (override with TWINLOOP_TEST_TORCH) and lerobot
# with --no-deps plus the packages its dataset modules import, within lerobot's own bounds.
TORCH = os.environ.get("TWINLOOP_TEST_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
LEROBOT_DEPS = [
    "datasets>=4.0.0,<5.0.0",
    "huggingface-hub>=0.34.2,<0.36.0",
    "accelerate>=1.10.0,<2.0.0",
    "packaging>=24.2,<26.0",
    "av>=15.0.0,<16.0.0",
    "draccus==0.10.0",
    "jsonlines>=4.0.0,<5.0.0",
    "deepdiff>=7.0.1,<9.0.0",
    "termcolor>=2.4.0,<4.0.0",
    "einops>=0.8.0,<0.9.0",
    "gymnasium>=1.1.1,<2.0.0",
    "pillow",
    "pyarrow",
]


def _lerobot_python() -> Path:
    """A venv with lerobot 0.4.4, built once under ~/.cache/twinloop/test-venvs."""
    base = Path(os.environ.get("TWINLOOP_TEST_VENVS", Path.home() / ".cache/twinloop/test-venvs"))
    venv = base / f"lerobot-{LEROBOT_VERSION}"
    python = venv / "bin" / "python"
    stamp = venv / "twinloop-ready.json"
    want = {"lerobot": LEROBOT_VERSION, "torch": TORCH, "deps": LEROBOT_DEPS}
    if stamp.exists() and json.loads(stamp.read_text()) == want and python.exists():
        return python
    if venv.exists():
        import shutil

        shutil.rmtree(venv)
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *TORCH], check=True)
    subprocess.run([*pip, "--no-deps", f"lerobot=={LEROBOT_VERSION}"], check=True)
    subprocess.run([*pip, *LEROBOT_DEPS], check=True)
    stamp.write_text(json.dumps(want))
    return python


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    for root, dump in zip(sys.argv[1::2], sys.argv[2::2]):
        ds = LeRobotDataset("twinloop/export-test", root=root)
        items = [ds[i] for i in range(len(ds))]
        arrays = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if isinstance(values[0], str):
                arrays[key] = np.array(values)
            else:
                arrays[key] = np.stack([v.numpy() for v in values])
        np.savez(dump, **arrays)
        meta = {
            "len": len(ds),
            "num_episodes": ds.num_episodes,
            "from": [int(i) for i in ds.meta.episodes["dataset_from_index"]],
            "to": [int(i) for i in ds.meta.episodes["dataset_to_index"]],
            "fps": ds.fps,
            "camera_keys": ds.meta.camera_keys,
            "stats": sorted(ds.meta.stats),
        }
        with open(dump + ".json", "w") as f:
            json.dump(meta, f)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_lerobot_dataset_class_loads_the_export(
    rich_dir: Path, toy_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    python = _lerobot_python()
    rich, toy = tmp_path / "rich", tmp_path / "toy"
    export_lerobot(rich_dir, rich, fps=10)
    export_lerobot(toy_dir, toy, task_field="note")
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    dumps = [tmp_path / "rich.npz", tmp_path / "toy.npz"]
    args = [str(rich), str(dumps[0]), str(toy), str(dumps[1])]
    proc = subprocess.run(
        [str(python), "-c", LOAD_SCRIPT, *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    ds = open_dataset(rich_dir)
    got = np.load(dumps[0])
    meta = json.loads(Path(f"{dumps[0]}.json").read_text())
    lengths = [len(ep) for ep in ds.iterate_episodes()]
    assert meta["len"] == ds.total_steps == sum(lengths) and meta["num_episodes"] == len(ds)
    bounds = np.cumsum([0, *lengths])
    assert meta["from"] == bounds[:-1].tolist() and meta["to"] == bounds[1:].tolist()
    assert meta["fps"] == 10 and meta["camera_keys"] == ["observation.images.cam"]
    assert "observation.state" not in meta["stats"] and "action" in meta["stats"]
    f32 = np.float32
    for e, ep in enumerate(ds.iterate_episodes()):
        L, sl = len(ep), slice(bounds[e], bounds[e + 1])
        np.testing.assert_array_equal(got["episode_index"][sl], e)
        np.testing.assert_array_equal(got["frame_index"][sl], np.arange(L))
        np.testing.assert_array_equal(got["index"][sl], np.arange(bounds[e], bounds[e + 1]))
        np.testing.assert_array_equal(got["timestamp"][sl], (np.arange(L) / 10).astype(f32))
        cam = np.asarray(ep.observations["cam"])[:L]
        img = got["observation.images.cam"][sl]  # (L, 3, H, W) floats in [0, 1]
        assert img.shape == (L, 3, 16, 12)
        np.testing.assert_array_equal(np.rint(img * 255).astype(np.uint8), np.stack([cam] * 3, 1))
        # lerobot turns Python floats into float32 tensors
        np.testing.assert_array_equal(
            got["observation.grid"][sl], np.asarray(ep.observations["grid"])[:L].astype(f32)
        )
        np.testing.assert_array_equal(got["observation.pair.0"][sl], ep.observations["pair"][0][:L])
        np.testing.assert_array_equal(got["observation.pair.1"][sl], ep.observations["pair"][1][:L])
        assert got["text.label"][sl].tolist() == list(ep.observations["label"][:L])
        np.testing.assert_array_equal(got["action"][sl], _flat_actions(ds, ep).astype(f32))
        np.testing.assert_array_equal(
            got["applied_command"][sl], ep.infos["applied_command"][1:].astype(f32)
        )
        np.testing.assert_array_equal(got["next.reward"][sl], ep.rewards.astype(f32))
        np.testing.assert_array_equal(got["next.terminated"][sl], ep.terminations)
        np.testing.assert_array_equal(got["next.truncated"][sl], ep.truncations)
        np.testing.assert_array_equal(got["next.success"][sl], ep.infos["is_success"][1:])
        assert got["task"][sl].tolist() == ["ns/rich-v0"] * L

    toy_ds = open_dataset(toy_dir)
    got = np.load(dumps[1])
    notes = [n for ep in toy_ds.iterate_episodes() for n in ep.observations["note"][: len(ep)]]
    assert got["task"].tolist() == notes
    states = np.concatenate(
        [np.asarray(ep.observations["state"])[: len(ep)] for ep in toy_ds.iterate_episodes()]
    )
    np.testing.assert_array_equal(got["observation.state"], states)
    images = np.concatenate(
        [np.asarray(ep.observations["image"])[: len(ep)] for ep in toy_ds.iterate_episodes()]
    )
    np.testing.assert_array_equal(
        np.rint(got["observation.images.image"] * 255).astype(np.uint8),
        images.transpose(0, 3, 1, 2),
    )
