"""``twinloop data show``: the figures exist, are valid images, and show what the dataset holds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.datasets.conftest import STEM, ToyEnv, run_episodes
from twinloop.cli import main
from twinloop.datasets import RecordEpisodes, open_dataset
from twinloop.datasets.show import (
    Hints,
    choose_episode,
    episode_table,
    frame_steps,
    show_dataset,
    unit_of,
)
from twinloop.datasets.show_cli import hints_for
from twinloop.eval.bootstrap import bootstrap_ci
from twinloop.eval.rollout import wilson_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.width > 200 and im.height > 150, (path, im.size)
        return im.size


def _gif_frames(path) -> int:
    assert path.read_bytes()[:6] in (b"GIF87a", b"GIF89a"), path
    with Image.open(path) as im:
        return im.n_frames


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("show_toy")
    env = RecordEpisodes(ToyEnv(), root / "ns" / "toy-v0")
    run_episodes(env, 5, seed=3)
    env.close()
    return root / "ns" / "toy-v0"


@pytest.fixture(scope="module")
def stem_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("show_stem")
    argv = ["run", STEM, "--controller", "greedy-neighbor", "--episodes", "6", "--seed", "1"]
    assert main([*argv, "--record", str(root), "--dataset-id", "ns/stem-v0", "--quiet"]) == 0
    return root / "ns" / "stem-v0"


def test_toy_figures_are_valid_and_show_the_data(toy_dir, tmp_path):
    with open_dataset(toy_dir) as ds:
        calls: list[tuple[str, int, int]] = []
        result = show_dataset(
            ds,
            tmp_path / "fig",
            episode=2,
            mean_interval=bootstrap_ci,
            rate_interval=wilson_interval,
            progress=lambda *a: calls.append(a),
        )
        ep = ds[2]
        meta = ds.episode_metadata
    names = {p.name for p in result.paths}
    assert names == {
        "returns_lengths.png",
        "endings.png",
        "episode_2_observations.png",
        "episode_2_actions.png",
        "episode_2_image_frames.png",
        "episode_2_image.gif",
    }
    for p in result.paths:
        if p.suffix == ".png":
            _assert_png(p)
    assert result.episode == 2 and result.episode_id == ep.id
    by_name = {f.path.name: f for f in result.figures}

    # returns and lengths: the metadata's, with a mean and an interval around it
    rl = by_name["returns_lengths.png"].data
    np.testing.assert_allclose(rl["returns"], [m["episode_return"] for m in meta])
    np.testing.assert_array_equal(rl["lengths"], [m["total_steps"] for m in meta])
    lo, hi = rl["returns_mean_ci95"]
    assert lo <= rl["returns_mean"] <= hi
    assert rl["returns_mean"] == pytest.approx(np.mean([m["episode_return"] for m in meta]))

    # endings: counts agree with the metadata (ToyEnv infos have no failure code)
    end = by_name["endings.png"].data
    n_term = sum(bool(m["terminated"]) for m in meta)
    n_trunc = sum(bool(m["truncated"]) for m in meta)
    assert end["endings"].get("terminated", 0) == n_term
    assert end["endings"].get("truncated", 0) == n_trunc
    assert "causes" not in end
    for k, (lo, hi) in end["endings_ci95"].items():
        assert lo <= end["endings"][k] / len(meta) <= hi

    # traces: the state leaf (L + 1 rows) and the action (L rows), reward and return
    obs = by_name["episode_2_observations.png"].data
    assert set(obs) == {"observation/state"}  # the image is drawn apart, text is not drawn
    np.testing.assert_array_equal(obs["observation/state"], ep.observations["state"])
    act = by_name["episode_2_actions.png"].data
    np.testing.assert_array_equal(act["action"][:, 0], ep.actions)
    np.testing.assert_array_equal(act["reward"][:, 0], ep.rewards)
    np.testing.assert_allclose(act["return"][-1, 0], np.sum(ep.rewards))

    # images: a contact sheet of the recorded frames and one GIF frame per observation row
    sheet = by_name["episode_2_image_frames.png"].data
    np.testing.assert_array_equal(sheet["steps"], np.arange(len(ep) + 1))
    np.testing.assert_array_equal(sheet["frames"], ep.observations["image"])
    assert _gif_frames(tmp_path / "fig" / "episode_2_image.gif") == len(ep) + 1
    gif_calls = [c for c in calls if c[0] == "episode_2_image.gif"]
    assert gif_calls[-1][1:] == (len(ep) + 1, len(ep) + 1)


def test_long_episodes_are_subsampled_in_animations(toy_dir, tmp_path):
    with open_dataset(toy_dir) as ds:
        k = int(np.argmax([m["total_steps"] for m in ds.episode_metadata]))
        length = len(ds[k])
        result = show_dataset(ds, tmp_path, episode=k, max_frames=3, sheet_frames=2)
    gif = next(f for f in result.figures if f.path.suffix == ".gif")
    assert _gif_frames(gif.path) == 3
    np.testing.assert_array_equal(gif.data["steps"], frame_steps(length + 1, 3))
    assert gif.data["steps"][0] == 0 and gif.data["steps"][-1] == length
    sheet = next(f for f in result.figures if f.path.name.endswith("_frames.png"))
    np.testing.assert_array_equal(sheet.data["steps"], [0, length])


def test_grey_images_make_a_sheet_and_a_gif(tmp_path):
    env = RecordEpisodes(ToyEnv((24, 40)), tmp_path / "ns" / "grey-v0")
    run_episodes(env, 2, seed=0)
    env.close()
    with open_dataset(tmp_path / "ns" / "grey-v0") as ds:
        result = show_dataset(ds, tmp_path / "fig", episode=1)
        n = len(ds[1])
    gif = next(p for p in result.paths if p.suffix == ".gif")
    assert _gif_frames(gif) == n + 1
    _assert_png(next(p for p in result.paths if p.name.endswith("_frames.png")))


def test_default_episode_has_the_median_return(toy_dir):
    with open_dataset(toy_dir) as ds:
        returns = np.array([m["episode_return"] for m in ds.episode_metadata])
        k, reason = choose_episode(ds)
    assert returns[k] == np.sort(returns)[len(returns) // 2]
    assert "median" in reason


def test_bad_episode_and_empty_dataset_are_refused(toy_dir, tmp_path):
    with open_dataset(toy_dir) as ds:
        with pytest.raises(ValueError, match=r"episode 5 is out of range.*valid: 0\.\.4"):
            show_dataset(ds, tmp_path, episode=5)
        assert choose_episode(ds, -1)[0] == 4
        with pytest.raises(ValueError, match="no episodes"):
            show_dataset(ds.filter(lambda m: False), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written before the checks


def test_stem_causes_and_named_fields(stem_dir, tmp_path):
    with open_dataset(stem_dir) as ds:
        hints = hints_for(ds)
        names = ds.metadata["twinloop"]["env_metadata"]["failure_names"]
        table = episode_table(ds, hints.failure_names)
        expected = []
        for ep in ds.iterate_episodes():
            code = int(ep.infos["failure"][-1])
            expected.append(
                names[code] if code else "success" if ep.infos["is_success"][-1] else "truncated"
            )
        assert table.causes == expected
        result = show_dataset(ds, tmp_path, episode=0, hints=hints)
        ep = ds[0]
    from twinloop.sim.stem.task import observation_layout

    layout = observation_layout(ds_config(stem_dir))
    assert hints.observation_layout == layout.describe()
    by_name = {f.path.name: f for f in result.figures}
    obs = by_name["episode_0_observations.png"].data
    assert list(obs) == list(layout.names)
    for name in layout.names:
        want = layout.get(ep.observations, name).reshape(len(ep) + 1, -1)
        np.testing.assert_array_equal(obs[name], want)
    causes = by_name["endings.png"].data["causes"]
    assert sum(causes.values()) == len(expected)
    assert all(causes[c] == expected.count(c) for c in causes)
    assert hints.action_labels and len(hints.action_labels) == ds.action_space.shape[0]


def ds_config(path):
    from twinloop.sim.stem.figures import config_of

    with open_dataset(path) as ds:
        return config_of(ds)


def test_a_layout_that_does_not_fit_falls_back_to_index_labels(stem_dir, tmp_path):
    bad = {"a": {"start": 0, "stop": 3, "shape": [3], "doc": ""}}
    with open_dataset(stem_dir) as ds:
        result = show_dataset(ds, tmp_path, episode=0, hints=Hints(observation_layout=bad))
        n = ds[0].observations.shape[0]
    obs = next(f for f in result.figures if f.path.name == "episode_0_observations.png")
    assert list(obs.data) == ["observation"]
    assert obs.data["observation"].shape == (n, 12)


def test_cli_show_stem(stem_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["data", "show", str(stem_dir), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "the median return" in text
    listed = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert len(listed) == 5 and any(p.endswith("_si_path.png") for p in listed)
    for p in listed:
        _assert_png(out / p.rsplit("/", 1)[-1])


def test_cli_show_toy_has_no_system_figures(toy_dir, capsys):
    assert main(["data", "show", str(toy_dir), "--episode", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "episode 1 (id 1): episode 1 as asked" in text
    assert "wrote 6 files to" in text
    assert (toy_dir / "figures" / "episode_1_image.gif").exists()


def test_cli_show_errors(toy_dir, tmp_path, capsys):
    assert main(["data", "show", str(toy_dir), "--episode", "9", "--quiet"]) == 2
    assert "valid: 0..4" in capsys.readouterr().err
    assert main(["data", "show", str(tmp_path / "nothing")]) == 2
    assert "no dataset under" in capsys.readouterr().err
    for name in ("a-v0", "b-v0"):
        env = RecordEpisodes(ToyEnv(), tmp_path / "two" / name)
        run_episodes(env, 1, seed=0)
        env.close()
    assert main(["data", "show", str(tmp_path / "two"), "--quiet"]) == 2
    assert "holds 2 datasets; name one" in capsys.readouterr().err


def test_unit_of_reads_name_suffixes():
    assert unit_of("distance_km") == "km"
    assert unit_of("wind_measured_m_per_s") == "m/s"
    assert unit_of("si_position_angstrom") == "Å"
    assert unit_of("time_fraction") is None
    assert unit_of("s") is None
