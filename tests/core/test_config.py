from __future__ import annotations

import dataclasses
import json

import pytest

from twinloop.core.config import (
    ConfigError,
    ConfigSection,
    cross_check,
    describe,
    flat_fields,
    from_dict,
    override,
    param,
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


# --- declared sections: one validation routine for bounds, choices, lengths and checks ---------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Probe(ConfigSection):
    """A toy section: every kind of declaration the validation routine handles."""

    mode: str = param("scan", choices=("scan", "spot"), doc="how the beam moves")
    dwell_min_s: float = param(0.1, units="s", gt=0.0, le=10.0)
    dwell_s: float = param(1.0, units="s", ge="dwell_min_s", lt=60.0, doc="per spot [X1]")
    pixels: int = param(64, units="px", ge=16, le=1024)
    knots_m: tuple[float, ...] = param((0.0, 1.0, 2.0), units="m", length=3, increasing=True)
    label: str = param("")
    enabled: bool = param(True)
    gain: float = param(2.0)

    @cross_check
    def _spot_needs_label(self) -> str | None:
        if self.mode == "spot" and not self.label:
            return '_Probe: mode="spot" needs a label'
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Rig(ConfigSection):
    probe: _Probe = dataclasses.field(default_factory=_Probe)
    stage_range_m: float = param(2.0, units="m", ge=0.0)

    @cross_check
    def _knots_fit_stage(self) -> str | None:
        if self.probe.knots_m[-1] > self.stage_range_m:
            return f"_Probe.knots_m reach {self.probe.knots_m[-1]} m beyond stage_range_m"
        return None


def test_declared_bounds_name_section_field_value_and_interval() -> None:
    with pytest.raises(ConfigError, match=r"^_Probe\.pixels = 8 is outside \[16, 1024\]$") as exc:
        _Probe(pixels=8)
    assert exc.value.fields == ("_Probe.pixels",)
    with pytest.raises(ConfigError, match=r"_Probe\.dwell_min_s = 0\.0 is outside \(0\.0, 10\.0\]"):
        _Probe(dwell_min_s=0.0)
    with pytest.raises(ConfigError, match=r"_Probe\.mode = 'raster' is not one of 'scan', 'spot'"):
        _Probe(mode="raster")
    assert _Probe(dwell_min_s=10.0, dwell_s=10.0).dwell_s == 10.0, "closed bounds are inside"


def test_a_bound_may_name_a_sibling_field_and_the_error_says_which() -> None:
    with pytest.raises(ConfigError) as exc:
        _Probe(dwell_min_s=2.0)
    assert str(exc.value) == (
        "_Probe.dwell_s = 1.0 is outside [2.0, 60.0) (bounds from dwell_min_s = 2.0)"
    )
    assert _Probe(dwell_min_s=2.0, dwell_s=2.0).dwell_s == 2.0


def test_every_bad_field_is_reported_in_one_error() -> None:
    with pytest.raises(ConfigError) as exc:
        _Probe(pixels=2, gain=float("nan"), enabled="yes")  # type: ignore[arg-type]
    assert exc.value.fields == ("_Probe.pixels", "_Probe.enabled", "_Probe.gain")
    text = str(exc.value)
    assert "_Probe.gain = nan must be finite" in text
    assert "_Probe.enabled = 'yes' must be True or False" in text


def test_types_are_checked_from_the_annotations() -> None:
    with pytest.raises(ConfigError, match=r"_Probe\.pixels = 64\.0 must be an integer"):
        _Probe(pixels=64.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"_Probe\.gain = '2' must be a number"):
        _Probe(gain="2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"_Probe\.label = 3 must be a string"):
        _Probe(label=3)  # type: ignore[arg-type]
    assert _Probe(gain=3).gain == 3, "an int is a valid float value"


def test_tuple_fields_check_type_entries_length_and_order() -> None:
    with pytest.raises(ConfigError, match=r"_Probe\.knots_m has 2 entries, expected 3"):
        _Probe(knots_m=(0.0, 1.0))
    with pytest.raises(
        ConfigError, match=r"_Probe\.knots_m = \(0\.0, 1\.0, 1\.0\) must increase strictly"
    ):
        _Probe(knots_m=(0.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"_Probe\.knots_m\[1\] = nan must be a finite number"):
        _Probe(knots_m=(0.0, float("nan"), 2.0))
    with pytest.raises(
        ConfigError, match=r"_Probe\.knots_m = \[0\.0, 1\.0, 2\.0\] must be a tuple"
    ):
        _Probe(knots_m=[0.0, 1.0, 2.0])  # type: ignore[arg-type]


def test_cross_checks_run_after_the_fields_pass_and_see_overrides_together() -> None:
    with pytest.raises(ConfigError, match='mode="spot" needs a label') as exc:
        _Probe(mode="spot")
    assert exc.value.fields == (), "a cross-field problem names no single field"
    assert _Probe(mode="spot", label="A").mode == "spot"
    with pytest.raises(ConfigError, match="outside") as exc:
        _Probe(mode="spot", pixels=1)
    assert "needs a label" not in str(exc.value), "checks wait until every field is valid"
    with pytest.raises(ConfigError, match="beyond stage_range_m"):
        _Rig(stage_range_m=1.5)
    rig = override(_Rig(), stage_range_m=5.0, knots_m=(0.0, 2.5, 5.0))
    assert rig.probe.knots_m == (0.0, 2.5, 5.0)


def test_describe_lists_units_limits_and_meaning_of_every_leaf() -> None:
    rows = {row.path: row for row in describe(_Rig())}
    assert list(rows) == list(flat_fields(_Rig()))
    assert rows["probe.dwell_s"] == (
        "probe.dwell_s",
        1.0,
        "s",
        "[dwell_min_s, 60.0)",
        "per spot [X1]",
    )
    assert rows["probe.mode"].limits == "one of 'scan', 'spot'"
    assert rows["probe.knots_m"].limits == "3 entries, strictly increasing"
    assert rows["stage_range_m"].limits == "[0.0, inf]"
    assert rows["probe.gain"][2:] == ("", "", "")


def test_bad_declarations_fail_at_once() -> None:
    with pytest.raises(TypeError, match="at most one of ge= and gt="):
        param(1.0, ge=0.0, gt=0.0)
    with pytest.raises(TypeError, match="must be a number or a field name"):
        param(1.0, le=[1.0])  # type: ignore[arg-type]

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Typo(ConfigSection):
        low_s: float = param(0.0)
        high_s: float = param(1.0, ge="lo_s")

    with pytest.raises(TypeError, match=r"Typo\.high_s: bound 'lo_s' names no field"):
        Typo()


def test_overrides_from_json_lists_become_tuples() -> None:
    """A config recorded as JSON (robomimic env_args, datasets) overrides with lists."""
    import twinloop
    from twinloop.core.config import override, to_dict

    cfg = twinloop.make_config("twinloop/StemSteer-v0")
    again = override(cfg, **to_dict(cfg))
    assert again == cfg
    rated = override(cfg, safety={"max_command_step": [1.0, 1.0, 2.0]})
    assert rated.safety.max_command_step == (1.0, 1.0, 2.0)
