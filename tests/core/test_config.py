from __future__ import annotations

import dataclasses
import json

import pytest

from twinloop.core.config import (
    ConfigError,
    from_dict,
    override,
    parse_assignment,
    to_dict,
    to_json,
)
from twinloop.sim.stem.config import StemConfig


def test_override_by_flat_name_returns_a_copy() -> None:
    base = StemConfig()
    new = override(base, beam_current_na=0.2)
    assert new.physics.beam_current_na == 0.2
    assert base.physics.beam_current_na == 0.1, "the original is untouched"
    assert new.microscope is base.microscope, "untouched sections are shared, not copied"


def test_override_by_dotted_path_and_section_mapping() -> None:
    a = override(StemConfig(), **{"physics.beam_current_na": 0.3})
    b = override(StemConfig(), physics={"beam_current_na": 0.3})
    assert a == b
    assert a.physics.beam_current_na == 0.3


def test_configs_are_frozen() -> None:
    cfg = StemConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.physics.beam_current_na = 1.0  # type: ignore[misc]


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"no field 'beam_curent_na'.*beam_current_na"):
        override(StemConfig(), beam_curent_na=0.2)


def test_out_of_range_value_names_field_and_limits() -> None:
    with pytest.raises(ConfigError, match=r"beam_current_na = -1.*outside \[0.0, 10.0\]"):
        override(StemConfig(), beam_current_na=-1.0)
    with pytest.raises(ConfigError, match="rate_model = 'magic' is not one of"):
        override(StemConfig(), rate_model="magic")


def test_cross_field_validation_sees_all_overrides_at_once() -> None:
    cfg = override(StemConfig(), lattice_size_cells=8, goal_max_angstrom=3.0, goal_min_angstrom=1.0)
    assert cfg.physics.lattice_size_cells == 8
    with pytest.raises(ConfigError, match="goal_max_angstrom"):
        override(StemConfig(), lattice_size_cells=8)


def test_json_round_trip() -> None:
    cfg = override(StemConfig(), beam_current_na=0.25, max_command_step=(1.0, 1.0, 5.0))
    text = to_json(cfg)
    data = json.loads(text)
    assert data["__class__"].endswith("StemConfig")
    assert from_dict(StemConfig, data) == cfg
    assert to_dict(cfg)["safety"]["max_command_step"] == [1.0, 1.0, 5.0]


def test_parse_assignment_uses_field_types() -> None:
    cfg = StemConfig()
    assert parse_assignment(cfg, "beam_current_na=0.5") == ("physics.beam_current_na", 0.5)
    assert parse_assignment(cfg, "max_steps=7") == ("task.max_steps", 7)
    assert parse_assignment(cfg, "action_dwell=true") == ("task.action_dwell", True)
    assert parse_assignment(cfg, "rate_model=prior") == ("physics.rate_model", "prior")
    with pytest.raises(ConfigError, match="cannot parse max_steps='x'"):
        parse_assignment(cfg, "max_steps=x")
    with pytest.raises(ConfigError, match="name=value"):
        parse_assignment(cfg, "max_steps")
