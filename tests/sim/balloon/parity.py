"""The BLE parity flights on our side, and the gaps between two sets of flights.

The flights of :mod:`tests.sim.balloon.ble_reference` (its ``START``, ``COMMANDS`` and wind
cases) flown by :class:`~twinloop.sim.balloon.env.BalloonSimBackend` from the same start,
set through ``reset(options=...)``; :func:`gaps` measures how far two sets of flights are
apart in the quantities the issue's audit named (pressure %, altitude m, charge pp, ACS
energy %, position km).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.sim.balloon.ble_reference import COMMANDS, START, WIND_CASES
from twinloop.core.config import override
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import BalloonConfig
from twinloop.sim.balloon.env import BalloonSimBackend

#: The reference figures written once by ``ble_reference.py`` under BLE 1.0.1.
REFERENCE = Path(__file__).parent / "data" / "ble_reference.npz"
FIELDS = (
    "pressure_pa",
    "altitude_m",
    "battery_wh",
    "acs_wh",
    "x_m",
    "y_m",
    "superpressure_pa",
    "gas_temperature_k",
    "ballonet_air_mol",
)


def start_options(case: str) -> dict:
    """The reset options of a parity flight: :data:`START` and the case's wind."""
    levels, us, vs = WIND_CASES[case]
    return {
        **START,
        "wind_levels_pa": list(levels),
        "wind_u_m_per_s": list(us),
        "wind_v_m_per_s": list(vs),
    }


#: The kernel's switch of each item where the variants differ (1.0 where "ble" does it, with
#: the value "ble" takes), in the order of the issue.
ITEMS = {
    "ACS table read ratio-major, clamped": (K.P_EFF_POWER_MAJOR, 0.0),
    "power safety: BLE's sunrise search, once at the start": (K.P_SUN_LOCAL, 0.0),
    "refraction in the sun's elevation": (K.P_REFRACTION, 1.0),
    "volume and superpressure from the state before the sub-step": (K.P_ENV_BEFORE, 1.0),
    "no limit on the vertical step at the float level": (K.P_FLOAT_LIMIT, 0.0),
    "start-up solve with the base envelope volume": (K.P_INIT_BASE_VOLUME, 1.0),
}


def fly(
    case: str,
    cfg: BalloonConfig | None = None,
    flags: dict[int, float] | None = None,
    **overrides: object,
) -> dict[str, np.ndarray]:
    """Fly :data:`COMMANDS` from the parity start in wind case ``case``; per-step arrays.

    ``flags`` sets physics-parameter columns (``K.P_*``) after the config made them, to
    switch single items of :data:`ITEMS`.
    """
    cfg = cfg or BalloonConfig()
    if overrides:
        cfg = override(cfg, **overrides)
    backend = BalloonSimBackend(cfg)
    for col, value in (flags or {}).items():
        backend.params.physics[col] = value
    backend.reset(seed=0, options=start_options(case))
    f = backend.state["f"][0]
    n = len(COMMANDS)
    out = {k: np.full(n, np.nan) for k in FIELDS}
    applied = np.full(n, -1, dtype=np.int8)
    init = np.array([f[K.F_N_AIR], f[K.F_T_GAS], f[K.F_VOL], f[K.F_SP], f[K.F_T_AMB]])
    for k, c in enumerate(COMMANDS):
        meas, cmd = backend.apply(np.array([float(c)]))
        out["pressure_pa"][k] = f[K.F_P]
        out["altitude_m"][k] = meas[K.M_ALT]
        out["battery_wh"][k] = f[K.F_BATT]
        out["acs_wh"][k] = f[K.F_E_ACS]
        out["x_m"][k] = f[K.F_X]
        out["y_m"][k] = f[K.F_Y]
        out["superpressure_pa"][k] = f[K.F_SP]
        out["gas_temperature_k"][k] = f[K.F_T_GAS]
        out["ballonet_air_mol"][k] = f[K.F_N_AIR]
        applied[k] = int(cmd[0])
        if meas[K.M_STATUS] != K.OK:
            break
    res = {f"flight_{case}_{k}": v for k, v in out.items()}
    res[f"flight_{case}_applied"] = applied
    res[f"flight_{case}_init"] = init
    return res


def gaps(ours: dict, ble: dict, case: str) -> dict[str, float]:
    """Largest differences of one flight between two sets of flights.

    Pressure %, altitude m, charge pp, final ACS energy %, position km, and the number of
    steps whose applied command differs.
    """

    def get(d: dict, name: str) -> np.ndarray:
        return np.asarray(d[f"flight_{case}_{name}"], dtype=np.float64)

    cap = BalloonConfig().vehicle.battery_capacity_wh
    p_o, p_b = get(ours, "pressure_pa"), get(ble, "pressure_pa")
    acs_o, acs_b = get(ours, "acs_wh"), get(ble, "acs_wh")
    pos = np.hypot(get(ours, "x_m") - get(ble, "x_m"), get(ours, "y_m") - get(ble, "y_m"))
    return {
        "pressure_pct": float(np.nanmax(np.abs(p_o / p_b - 1.0)) * 100.0),
        "altitude_m": float(np.nanmax(np.abs(get(ours, "altitude_m") - get(ble, "altitude_m")))),
        "charge_pp": float(
            np.nanmax(np.abs(get(ours, "battery_wh") - get(ble, "battery_wh"))) / cap * 100.0
        ),
        "acs_energy_pct": float(abs(acs_o[-1] / acs_b[-1] - 1.0) * 100.0),
        "position_km": float(np.nanmax(pos) / 1000.0),
        "commands_differ": int(np.sum(get(ours, "applied") != get(ble, "applied"))),
    }


def item_gaps(case: str, ble: dict) -> dict[str, dict[str, float]]:
    """Gaps to BLE's flight of the "ble" variant with one item switched to "corrected"."""
    out = {"none (ble)": gaps(fly(case), ble, case)}
    for name, (col, ble_value) in ITEMS.items():
        out[name] = gaps(fly(case, flags={col: 1.0 - ble_value}), ble, case)
    out["all (corrected)"] = gaps(fly(case, physics_variant="corrected"), ble, case)
    return out


def main() -> None:
    """Print the gap of each variant and item to the stored BLE flights (system README)."""
    ble = dict(np.load(REFERENCE))
    keys = ("pressure_pct", "altitude_m", "charge_pp", "acs_energy_pct", "position_km")
    print("| switched to corrected | case | " + " | ".join(keys) + " | commands differ |")
    print("|---" * (len(keys) + 3) + "|")
    for case in WIND_CASES:
        for name, g in item_gaps(case, ble).items():
            cells = " | ".join(f"{g[k]:.3g}" for k in keys)
            print(f"| {name} | {case} | {cells} | {g['commands_differ']} |")


if __name__ == "__main__":
    main()
