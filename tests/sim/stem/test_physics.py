"""Physics of the STEM kernel against published numbers and exact invariants.

Sources: ``shared/reference/stem.md``; Schwarzer et al., arXiv:2311.17894 (2023) [S23];
Meyer et al., PRL 108, 196102 (2012) [Mey12]. Statistical tests use fixed seeds (so they are
deterministic) and state their tolerance: a p-value floor of 1e-4 and an absolute tolerance on
the estimated probability.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from twinloop.core.config import override
from twinloop.core.rng import new_streams, seed_streams
from twinloop.sim.stem import kernel as K
from twinloop.sim.stem.config import StemConfig, max_transfer_ev


def _state(cfg: StemConfig, n: int, seed: int = 0):
    params = K.physics_params(cfg)
    f, i, holes, meas = K.new_state(n)
    rng = new_streams(n)
    for row in range(n):
        seed_streams(rng, row, seed + row)
        K.reset(row, f, i, holes, params, rng, meas)
    return params, f, i, holes, meas, rng


def _still(**kw) -> StemConfig:
    """No drift, no imaging dose, no failure channels: only the beam-driven hops."""
    base = dict(
        drift_speed_max_angstrom_per_s=0.0,
        drift_diffusion_angstrom2_per_s=0.0,
        frame_time_s=0.0,
        beam_settle_s=0.0,
        knockout_ratio_60kv=0.0,
        loss_ratio=0.0,
        detection_noise_angstrom=0.0,
        randomize_lattice_angle=False,
    )
    base.update(kw)
    return override(StemConfig(), **base)


# --- lattice geometry -------------------------------------------------------------------------
def _positions(angle: float = 0.3) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    pts = [K.site_xy(i, j, sub, c, s) for i in range(-6, 7) for j in range(-6, 7) for sub in (0, 1)]
    return np.array(pts)


def test_bond_length_and_neighbour_shells() -> None:
    """Graphene: 3 neighbours at 1.42 A, 6 at 2.46 A, 3 at 2.84 A (reference sheet)."""
    pts = _positions()
    origin = np.array(K.site_xy(0, 0, 0, math.cos(0.3), math.sin(0.3)))
    d = np.sort(np.linalg.norm(pts - origin, axis=1))[1:13]
    np.testing.assert_allclose(d[:3], 1.42, atol=0.005)
    np.testing.assert_allclose(d[3:9], 2.46, atol=0.005)
    np.testing.assert_allclose(d[9:12], 2.84, atol=0.005)


def test_neighbor_sites_are_bonded_and_switch_sublattice() -> None:
    c, s = math.cos(0.7), math.sin(0.7)
    for sub in (0, 1):
        x, y = K.site_xy(3, -2, sub, c, s)
        for k in range(3):
            ni, nj, ns = K.neighbor_site(3, -2, sub, k)
            assert ns == 1 - sub
            nx, ny = K.site_xy(ni, nj, ns, c, s)
            assert math.hypot(nx - x, ny - y) == pytest.approx(K.BOND, abs=1e-12)
            ux, uy = K.bond_unit(k, sub, c, s)
            assert (nx - x, ny - y) == pytest.approx((K.BOND * ux, K.BOND * uy), abs=1e-12)
            # the way back: the old site is a neighbour of the new one
            back = {K.neighbor_site(ni, nj, ns, q) for q in range(3)}
            assert (3, -2, sub) in back


# --- rates -------------------------------------------------------------------------------------
def _rates(cfg: StemConfig, beam: tuple[float, float]) -> np.ndarray:
    _, f, i, *_ = _state(cfg, 1)
    out = np.zeros(3)
    K.rates_at(0, beam[0], beam[1], f, i, out)
    return out


def test_rates_are_linear_in_current() -> None:
    """Lambda = (I/e) sigma P(...) is linear in the beam current [S23]."""
    for model in ("physical", "prior"):
        beams = [(0.3, 1.1), (-1.0, 0.2), (1.7, -0.9)]
        r1 = np.array([_rates(_still(rate_model=model, beam_current_na=0.1), b) for b in beams])
        r2 = np.array([_rates(_still(rate_model=model, beam_current_na=0.3), b) for b in beams])
        np.testing.assert_allclose(r2, 3.0 * r1, rtol=1e-12)


@pytest.mark.parametrize("model", ["physical", "prior"])
def test_rate_map_has_c3v_symmetry(model: str) -> None:
    """Rotating the beam by 120 deg about the Si permutes the neighbour rates; mirrors swap them."""
    cfg = _still(rate_model=model, lattice_angle_deg=17.0)
    rng = np.random.default_rng(0)
    rot = math.radians(120.0)
    for _ in range(20):
        b = rng.uniform(-3, 3, size=2)
        r0 = _rates(cfg, tuple(b))
        rb = np.array(
            [
                math.cos(rot) * b[0] - math.sin(rot) * b[1],
                math.sin(rot) * b[0] + math.cos(rot) * b[1],
            ]
        )
        r1 = _rates(cfg, tuple(rb))
        np.testing.assert_allclose(np.sort(r1), np.sort(r0), rtol=1e-10, atol=1e-300)
        # mirror through the bond towards neighbour 2 leaves its rate unchanged, swaps 0 and 1
        u = np.array(K.bond_unit(2, 0, math.cos(math.radians(17.0)), math.sin(math.radians(17.0))))
        mb = 2 * np.dot(b, u) * u - b
        rm = _rates(cfg, tuple(mb))
        np.testing.assert_allclose(rm[[1, 0, 2]], r0, rtol=1e-10, atol=1e-300)


def test_prior_peak_matches_published_value() -> None:
    """The hand-set prior peaks at ln2/3 1/s, 0.85 bond lengths out, at 60 kV, 0.1 nA [S23]."""
    cfg = _still(rate_model="prior")
    u = K.bond_unit(0, 0, 1.0, 0.0)
    beam = (0.85 * K.BOND * u[0], 0.85 * K.BOND * u[1])
    assert _rates(cfg, beam)[0] == pytest.approx(math.log(2) / 3, rel=1e-12)


def test_physical_peak_rate_matches_reference_calibration() -> None:
    """0.03 b at 0.1 nA with a ~1 A probe gives a peak near 0.2 1/s (reference sheet)."""
    cfg = _still(probe_fwhm_angstrom=1.0)
    reach = K.BOND + cfg.physics.optimum_offset_angstrom
    u = K.bond_unit(1, 0, 1.0, 0.0)
    peak = _rates(cfg, (reach * u[0], reach * u[1]))[1]
    expected = 0.1e-9 / 1.602176634e-19 * 0.03e-8 / (2 * math.pi * (1.0 / 2.3548) ** 2)
    assert peak == pytest.approx(expected, rel=1e-3)
    assert 0.1 < peak < 0.3


def test_max_transferred_energy_matches_published_values() -> None:
    """E_max to a C nucleus: 11.6 eV at 60 kV and 20.1 eV at 100 kV (reference sheet)."""
    assert max_transfer_ev(60.0) == pytest.approx(11.6, abs=0.05)
    assert max_transfer_ev(100.0) == pytest.approx(20.1, abs=0.05)


def test_cross_section_rises_about_threefold_per_5kv() -> None:
    """Sub-threshold thermal tail: roughly x3 per +5 kV near 60 kV [Mey12, reference sheet]."""
    base = StemConfig().physics
    ratio = override(StemConfig(), beam_energy_kev=65.0).physics.cross_section_barn / (
        base.cross_section_barn
    )
    assert 2.7 < ratio < 3.3
    ko_60 = StemConfig().physics.knockout_ratio
    ko_65 = override(StemConfig(), beam_energy_kev=65.0).physics.knockout_ratio
    assert ko_65 > ko_60, "knock-out rises faster with energy than inversion"


# --- the Markov process ---------------------------------------------------------------------------
def _one_dwell(cfg: StemConfig, beam: tuple[float, float], dwell: float, n: int, seed: int):
    params, f, i, holes, meas, rng = _state(cfg, n, seed)
    for row in range(n):
        K.apply(
            row,
            beam[0] - f[row, K.F_FOV_X],
            beam[1] - f[row, K.F_FOV_Y],
            dwell,
            f,
            i,
            holes,
            params,
            rng,
            meas,
        )
    return f, i


def test_no_jump_probability_is_exp_of_total_rate() -> None:
    """P(no jump in tau) = exp(-sum(lambda) tau) for a continuous-time Markov chain [S23]."""
    cfg = _still()
    beam = (0.9, 0.6)
    total = _rates(cfg, beam).sum()
    tau = 0.7 / total  # P(no jump) = exp(-0.7) ~ 0.50
    n = 20000
    _, i = _one_dwell(cfg, beam, tau, n, seed=1)
    no_jump = int((i[:, K.I_HOPS] == 0).sum())
    p = math.exp(-total * tau)
    assert stats.binomtest(no_jump, n, p).pvalue > 1e-4
    assert abs(no_jump / n - p) < 0.015


def test_first_hop_goes_to_neighbours_in_proportion_to_rates() -> None:
    """Which neighbour: P(k) = lambda_k / sum(lambda) (competing exponential clocks) [S23]."""
    cfg = _still()
    beam = (0.5, 0.9)
    rates = _rates(cfg, beam)
    n = 20000
    _, i = _one_dwell(cfg, beam, 20.0 / rates.sum(), n, seed=2)
    first = i[:, K.I_FIRST_HOP]
    assert (first >= 0).all(), "a long dwell always hops"
    counts = np.bincount(first, minlength=3)
    expected = n * rates / rates.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-4
    np.testing.assert_allclose(counts / n, rates / rates.sum(), atol=0.015)


def test_several_hops_per_dwell_follow_poisson_under_uniform_dose() -> None:
    """Several hops per dwell: under a uniform dose the hop count is Poisson(3 r T).

    With a uniform imaging dose every neighbour has the same constant rate r wherever the Si
    is, so the number of hops in a frame of T seconds is Poisson(3 r T).
    """
    cfg = _still(frame_time_s=30.0, imaging_current_na=3.0, fov_angstrom=10.0)
    n = 8000
    params, f, i, holes, meas, rng = _state(cfg, n, seed=3)
    rate = f[0, K.F_IMG_RATE]
    mean = 3 * rate * 30.0
    assert 1.0 < mean < 10.0, mean
    far = 1e6  # park the beam far away: only the imaging dose acts
    for row in range(n):
        K.apply(row, far, far, 0.1, f, i, holes, params, rng, meas)
    hops = i[:, K.I_HOPS]
    assert hops.mean() == pytest.approx(mean, rel=0.03)
    assert hops.var() == pytest.approx(mean, rel=0.06)


def test_knockout_and_loss_compete_with_inversion() -> None:
    """Each event is a knock-out with probability kappa / (1 + kappa + mu) [reference sheet].

    Under a uniform dose the rates do not depend on where the Si is, so the number of hops
    before the terminal event is geometric and the terminal channel is knock-out with
    probability kappa / (kappa + mu).
    """
    k, mu = 0.2, 0.05
    cfg = _still(
        knockout_ratio_60kv=k,
        loss_ratio=mu,
        frame_time_s=600.0,
        imaging_current_na=10.0,
        fov_angstrom=20.0,
    )
    n = 20000
    params, f, i, holes, meas, rng = _state(cfg, n, seed=4)
    for row in range(n):
        K.apply(row, 1e6, 1e6, 0.1, f, i, holes, params, rng, meas)
    status = i[:, K.I_STATUS]
    ended = (status == K.KNOCKOUT) | (status == K.LOST)
    assert ended.mean() > 0.999, "about 100 expected events: every env reaches a failure"
    ko = int((status == K.KNOCKOUT).sum())
    lost = int((status == K.LOST).sum())
    assert stats.binomtest(ko, ko + lost, k / (k + mu)).pvalue > 1e-4
    q = (k + mu) / (1 + k + mu)
    hops = i[ended, K.I_HOPS]
    assert hops.mean() == pytest.approx((1 - q) / q, rel=0.03)
    assert (
        stats.chisquare(
            np.bincount(np.minimum(hops, 15), minlength=16),
            hops.size * np.append(q * (1 - q) ** np.arange(15), (1 - q) ** 15),
        ).pvalue
        > 1e-4
    )


def test_drift_moves_the_view_at_the_drawn_velocity() -> None:
    cfg = _still(
        drift_speed_max_angstrom_per_s=0.5,
        beam_current_na=0.0,
        frame_time_s=2.0,
        beam_settle_s=1.0,
        fov_angstrom=200.0,
    )
    params, f, i, holes, meas, rng = _state(cfg, 4)
    for row in range(4):
        start = f[row, [K.F_FOV_X, K.F_FOV_Y]].copy()
        v = f[row, [K.F_VX, K.F_VY]].copy()
        assert np.hypot(*v) <= 0.5
        K.apply(row, 0.0, 0.0, 3.0, f, i, holes, params, rng, meas)
        np.testing.assert_allclose(f[row, [K.F_FOV_X, K.F_FOV_Y]] - start, v * 6.0, atol=1e-12)
        assert meas[row, K.M_ELAPSED] == pytest.approx(6.0)


def test_recentring_costs_time_and_brings_the_si_back() -> None:
    """The view is re-centred when the Si leaves the central half [S23]; that costs a frame."""
    cfg = _still(drift_speed_max_angstrom_per_s=2.0, beam_current_na=0.0, fov_angstrom=20.0)
    params, f, i, holes, meas, rng = _state(cfg, 1, seed=5)
    f[0, K.F_VX], f[0, K.F_VY] = 1.0, 0.0
    recentred = False
    for _ in range(10):
        K.apply(0, 0.0, 0.0, 1.0, f, i, holes, params, rng, meas)
        if meas[0, K.M_ELAPSED] > 1.0 + 1e-9:
            recentred = True
            assert meas[0, K.M_ELAPSED] == pytest.approx(1.0 + cfg.microscope.recentre_time_s)
            # centred on the Si, which then drifts on during the re-centring frame itself
            assert meas[0, K.M_SI] == pytest.approx(-1.0 * cfg.microscope.recentre_time_s)
            assert meas[0, K.M_SI + 1] == pytest.approx(0.0, abs=1e-9)
    assert recentred
    assert i[0, K.I_STATUS] == K.OK


def test_si_reaching_the_lattice_edge_ends_the_episode() -> None:
    cfg = _still(
        lattice_size_cells=8,
        imaging_current_na=10.0,
        frame_time_s=100.0,
        fov_angstrom=20.0,
        goal_max_angstrom=3.0,
        goal_min_angstrom=1.0,
    )
    params, f, i, holes, meas, rng = _state(cfg, 32, seed=6)
    for _ in range(50):
        for row in range(32):
            if i[row, K.I_STATUS] == K.OK:
                K.apply(row, 1e6, 1e6, 0.1, f, i, holes, params, rng, meas)
    assert (i[:, K.I_STATUS] == K.EDGE).all()
    for row in range(32):
        site = i[row, [K.I_SI_I, K.I_SI_J, K.I_SI_S]]
        assert K.at_edge(*map(int, site), 4, 1.0, 0.0, holes[row], 0)


def test_holes_stop_the_si() -> None:
    """A neighbour missing (a hole) ends the episode as an edge failure."""
    cfg = _still(
        n_holes=1,
        hole_radius_angstrom=2.0,
        hole_min_distance_angstrom=5.0,
        hole_max_distance_angstrom=5.0,
        imaging_current_na=10.0,
        frame_time_s=200.0,
        fov_angstrom=20.0,
    )
    params, f, i, holes, meas, rng = _state(cfg, 64, seed=7)
    assert np.allclose(np.hypot(holes[:, 0, 0], holes[:, 0, 1]), 5.0)
    for row in range(64):
        K.apply(row, 1e6, 1e6, 0.1, f, i, holes, params, rng, meas)
    edges = np.flatnonzero(i[:, K.I_STATUS] == K.EDGE)
    assert edges.size > 0
    for row in edges:
        x, y = K.site_xy(*map(int, i[row, [K.I_SI_I, K.I_SI_J, K.I_SI_S]]), 1.0, 0.0)
        # the Si stopped within a bond of the hole's rim
        assert math.hypot(x - holes[row, 0, 0], y - holes[row, 0, 1]) < 2.0 + K.BOND + 1e-9


def test_si_out_of_view_is_a_failure() -> None:
    cfg = _still(
        imaging_current_na=5.0,
        frame_time_s=200.0,
        fov_angstrom=6.0,
        offset_max_angstrom=2.0,
        goal_max_angstrom=2.5,
        goal_min_angstrom=1.0,
    )
    params, f, i, holes, meas, rng = _state(cfg, 16, seed=8)
    for row in range(16):
        K.apply(row, 1e6, 1e6, 0.1, f, i, holes, params, rng, meas)
    assert (i[:, K.I_STATUS] == K.OUT_OF_VIEW).any()


def test_domain_randomisation_is_redrawn_at_every_reset() -> None:
    cfg = override(
        StemConfig(),
        cross_section_log_sd=0.3,
        probe_fwhm_rel_sd=0.1,
        optimum_offset_sd_angstrom=0.1,
    )
    params, f, i, holes, meas, rng = _state(cfg, 1, seed=9)
    draws = []
    for _ in range(5):
        K.reset(0, f, i, holes, params, rng, meas)
        draws.append(f[0, [K.F_RATE_A, K.F_INV2S2, K.F_REACH, K.F_VX, K.F_COS]].copy())
    draws = np.array(draws)
    assert (np.ptp(draws, axis=0) > 0).all(), "every randomised value changes between resets"
