"""Helpers to set up one balloon row in chosen conditions (zero wind unless asked)."""

from __future__ import annotations

import numpy as np

from twinloop.core.config import override
from twinloop.sim.balloon import kernel as K
from twinloop.sim.balloon.config import BalloonConfig

#: 2012-03-20 00:00 UTC: local midnight at longitude 0 (the sun is far below the horizon).
JD_MIDNIGHT_LON0 = 2456006.5


class Row:
    """One env's kernel arrays, initialised in neutral buoyancy at a chosen place and time."""

    def __init__(
        self,
        cfg: BalloonConfig | None = None,
        *,
        lat: float = 0.0,
        lon: float = 0.0,
        jd: float = JD_MIDNIGHT_LON0,
        p0: float = 7000.0,
        ir: float = 250.0,
        alpha: float = 0.5,
    ) -> None:
        """Initialise row 0 floating at ``p0`` Pa over ``(lat, lon)`` at Julian date ``jd``."""
        self.cfg = cfg or BalloonConfig()
        self.params = K.physics_params(self.cfg)
        self.wp = K.wind_params(self.cfg)
        self.f, self.i, self.wind, self.work, self.meas = K.new_state(self.cfg, 1)
        self.grid, self.levels = K.empty_grid()
        K.initialize(0, lat, lon, jd, 0.0, 0.0, p0, ir, alpha, self.f, self.i, self.params)

    def apply(self, cmd: int) -> int:
        return K.apply(
            0,
            float(cmd),
            self.f,
            self.i,
            self.wind,
            self.work,
            self.params,
            self.wp,
            self.grid,
            self.levels,
            self.meas,
        )

    def sub_step(self, cmd: int) -> None:
        K.sub_step(0, cmd, 0.0, 0.0, self.f, self.i, self.params)

    def lift_kg(self) -> float:
        f, p = self.f[0], self.params
        rho = f[K.F_P] / (K.R_AIR * f[K.F_T_AMB])
        mass = K.M_HE * p[K.P_N_HE] + K.M_AIR * f[K.F_N_AIR] + p[K.P_M_ENV] + p[K.P_M_PAY]
        return rho * f[K.F_VOL] - mass

    def __getitem__(self, col: int) -> float:
        """Float state column ``col`` of the row."""
        return float(self.f[0, col])


def config(**overrides: object) -> BalloonConfig:
    return override(BalloonConfig(), **overrides) if overrides else BalloonConfig()


__all__ = ["JD_MIDNIGHT_LON0", "Row", "config", "np"]
