"""Device profiles: priors drawn within their bounds, deterministic per seed, files validated."""

from __future__ import annotations

import json

import numpy as np
import pytest

import twinloop
from twinloop.core.config import ConfigError
from twinloop.core.profile import (
    DeviceProfile,
    Prior,
    draw_profile,
    load_profile,
    parse_profile,
    priors_for,
)

SYSTEMS = ("twinloop/StemSteer-v0", "twinloop/BalloonStationKeeping-v0")


def _get(cfg: object, path: str) -> object:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("env_id", SYSTEMS)
def test_every_prior_is_documented_and_names_a_field(env_id: str) -> None:
    cfg = twinloop.make_config(env_id)
    priors = priors_for(cfg)
    assert len(priors) >= 8
    assert len({p.path for p in priors}) == len(priors)
    for p in priors:
        _get(cfg, p.path)  # raises AttributeError for a stale path
        assert len(p.source) > 20, f"{p.path}: say where the spread comes from"


@pytest.mark.parametrize("env_id", SYSTEMS)
def test_draws_stay_within_bounds_and_pass_the_config(env_id: str) -> None:
    cfg = twinloop.make_config(env_id)
    priors = priors_for(cfg)
    for seed in range(60):
        profile = draw_profile(cfg, seed)
        profile.apply(cfg)  # validated by the config's own limits
        for p in priors:
            nominal, value = _get(cfg, p.path), profile.values[p.path]
            if isinstance(nominal, tuple):  # a table scales as a whole
                ratios = {v / n for v, n in zip(value, nominal, strict=True) if n}
                assert max(ratios) - min(ratios) < 1e-12
                assert p.low <= min(ratios) and max(ratios) <= p.high
                continue
            lo, hi = p.bounds(nominal)
            assert lo - 1e-12 <= value <= hi + 1e-12, (seed, p.path, value, lo, hi)


@pytest.mark.parametrize("env_id", SYSTEMS)
def test_draws_are_deterministic_per_seed_and_seeds_differ(env_id: str) -> None:
    cfg = twinloop.make_config(env_id)
    a, b, c = draw_profile(cfg, 7), draw_profile(cfg, 7), draw_profile(cfg, 8)
    assert a == b and a.name == "random:7"
    for path, value in a.values.items():
        assert value != c.values[path], f"{path} is the same for seeds 7 and 8"
        assert value != _get(cfg, path), f"{path} is nominal"


def test_draws_spread_like_their_prior() -> None:
    """Over many seeds, a log prior's ln(m) has about its declared sd (truncation shrinks it)."""
    cfg = twinloop.make_config(SYSTEMS[0])
    prior = next(p for p in priors_for(cfg) if p.path == "physics.cross_section_barn_60kv")
    nominal = cfg.physics.cross_section_barn_60kv
    logs = np.log([draw_profile(cfg, s, [prior]).values[prior.path] / nominal for s in range(400)])
    assert 0.6 * prior.sd < logs.std() < 1.05 * prior.sd
    assert abs(logs.mean()) < 0.15


def test_truncation_redraws_inside_tight_bounds() -> None:
    cfg = twinloop.make_config(SYSTEMS[0])
    prior = Prior("physics.loss_ratio", "log", 3.0, 0.9, 1.1, "a wide sd in tight bounds")
    values = [draw_profile(cfg, s, [prior]).values[prior.path] for s in range(50)]
    lo, hi = prior.bounds(cfg.physics.loss_ratio)
    assert all(lo <= v <= hi for v in values)
    assert len(set(values)) == 50  # redrawn, not clipped onto the bounds


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "exp"}, "kind = 'exp'"),
        ({"sd": 0.0}, "sd = 0.0"),
        ({"low": 1.2, "high": 2.0}, "must hold 1"),
        ({"kind": "shift", "low": 0.1, "high": 0.2}, "must hold 0"),
        ({"low": 2.0, "high": 1.0}, "low < high"),
    ],
)
def test_malformed_priors_are_refused(kwargs: dict, words: str) -> None:
    args = {"path": "physics.loss_ratio", "kind": "log", "sd": 0.1, "low": 0.5, "high": 2.0}
    with pytest.raises(ValueError, match=r"physics\.loss_ratio") as err:
        Prior(**{**args, **kwargs}, source="test")
    assert words in str(err.value)


def test_a_file_profile_is_named_by_its_stem_and_applied(tmp_path) -> None:
    cfg = twinloop.make_config(SYSTEMS[0])
    path = tmp_path / "lab-b.json"
    path.write_text(json.dumps({"physics": {"loss_ratio": 0.02}, "carbon_yield": 2e-3}))
    profile = parse_profile(str(path), cfg)
    assert profile.name == "lab-b"
    out = profile.apply(cfg)
    assert out.physics.loss_ratio == 0.02 and out.imaging.carbon_yield == 2e-3
    assert cfg.physics.loss_ratio != 0.02  # the nominal config is untouched


def test_a_file_value_outside_its_limits_names_file_field_and_limits(tmp_path) -> None:
    cfg = twinloop.make_config(SYSTEMS[0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"physics.loss_ratio": 3.0}))
    with pytest.raises(ConfigError) as err:
        load_profile(path, cfg)
    text = str(err.value)
    assert "bad.json" in text and "loss_ratio = 3.0" in text and "[0.0, 1.0]" in text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[1, 2]", "expected a non-empty JSON object"),
        ("{}", "expected a non-empty JSON object"),
        ("{not json", "not JSON"),
        ('{"no_such_field": 1}', "no field 'no_such_field'"),
    ],
)
def test_malformed_profile_files_are_precise_errors(tmp_path, content: str, words: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"p\.json") as err:
        load_profile(path, twinloop.make_config(SYSTEMS[0]))
    assert words in str(err.value)


@pytest.mark.parametrize("spec", ["random:", "random:-1", "random:x", "random:1.5"])
def test_a_bad_seed_is_named(spec: str) -> None:
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        parse_profile(spec, twinloop.make_config(SYSTEMS[0]))


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"nope\.json: cannot read it"):
        parse_profile(str(tmp_path / "nope.json"), twinloop.make_config(SYSTEMS[0]))


def test_public_says_the_name_only() -> None:
    profile = DeviceProfile("random:3", {"physics.loss_ratio": 0.0123})
    assert profile.public() == {"profile": "random:3"}
    assert profile.privileged() == {"name": "random:3", "values": {"physics.loss_ratio": 0.0123}}


def test_a_config_without_a_prior_is_named() -> None:
    cfg = twinloop.make_config("twinloop/LangRearrange-v0")
    with pytest.raises(ValueError, match="no device-profile prior for"):
        priors_for(cfg)
