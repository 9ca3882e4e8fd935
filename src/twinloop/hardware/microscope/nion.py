"""Nion Swift's instrumentation API behind the :class:`~.protocol.Microscope` interface.

:class:`NionMicroscope` drives a STEM through the objects Nion Swift registers with its
``HardwareSourceManager``: the STEM controller (named controls through ``GetVal``/``SetVal``,
``probe_state`` and ``probe_position``) and the scan hardware source (``record_immediate`` with
scan frame parameters). Every command goes through that API:

=================  ==========================================================================
twinloop command   Nion Swift call
=================  ==========================================================================
``park(x, y)``     blank (``C_Blank`` = 1), stop any running scan, ``probe_position`` =
                   fractional ``(y, x)`` of the scan, wait the beam-settle time
``dwell(t)``       unblank (``C_Blank`` = 0), wait ``t``, blank
``blank()``        ``SetVal("C_Blank", 1)`` (read back)
``acquire(n, t)``  unblank, ``record_immediate`` of an ``n`` x ``n`` HAADF frame (key
                   ``"pixel_size"``; ``"size"`` would be ignored) with ``t`` per pixel, blank
``shift_view``     scan offset (``center_nm`` of the frame parameters), wait the settle time
voltage, current   ``GetVal("EHT")`` (V), ``GetVal("BeamCurrent")`` (A)
=================  ==========================================================================

Coordinates: twinloop's view frame has x to the right and y up, in angstrom from the centre of
the field of view; Nion's fractional probe position has its origin at the top-left corner and
y down, so ``fx = 0.5 + x / fov`` and ``fy = 0.5 - y / fov``. Nion frames have row 0 at the
top; :class:`~.protocol.Frame` has row 0 at the bottom, so frames are flipped vertically. The
scan offset ``center_nm`` is ``(y, x)`` in nm with y down.

Time: the adapter waits through a :class:`Clock`. On an instrument that is the wall clock
(:class:`WallClock`). A usim twin made by :func:`make_usim_with_twinloop_sample` runs on a
:class:`SimulatedClock`: waiting advances simulated seconds instantly and a frame advances it by
the frame's duration. The adapter finds the twin's clock by the instrument id, so a dwell of
3 s costs no wall time while the command sequence still travels through Nion's API.

The usim twin (:func:`make_usim_with_twinloop_sample`) is Nion's own simulated instrument
(``nionswift-usim``: its value manager, STEM controller, scan device and scan hardware source)
whose sample is :class:`TwinloopSample`, a scan-data generator that owns a
:class:`~.fake.SimMicroscope` and maps what Nion does onto it:

* the probe parked at a new position (``probe_state_changed_event``) -> ``SimMicroscope.park``
  (the sample drifts for the beam-settle time);
* the beam unblanked while the probe is parked, until it is blanked again, the probe moves or
  a scan starts -> ``SimMicroscope.dwell`` for the time elapsed on the clock (the Si hops under
  the kernel's Markov process at that probe position);
* a frame scanned with the beam unblanked -> ``SimMicroscope.acquire`` (render + scanning dose);
  with the beam blanked the frame is dark and delivers no dose;
* a new scan offset -> ``SimMicroscope.shift_view``.

The sample's own clock advances only through those mapped events, like the in-process
instrument's ("time only passes through commands"): blanked idle time beyond the beam-settle
charged by a park or shift does not drift it, and a re-park at the same spot (which Nion does not
report) charges no settle. Only one detector channel per frame is rendered (the adapter enables
HAADF alone); frames must be square, unrotated, and cover the config's field of view.

Usage (headless, e.g. in tests)::

    cfg = twinloop.make_config("twinloop/StemSteer-v0", frame_pixels=64, frame_time_s=0.1)
    with make_usim_with_twinloop_sample(cfg, seed=0) as twin:
        env = twinloop.make("twinloop/StemSteer-v0", backend="nion", config=cfg,
                            **twin.backend_options())
        ...
        twin.sim.truth()  # ground truth of the simulated sample

Vendor packages import lazily, when a :class:`NionMicroscope` or a twin is made; without them
an :class:`ImportError` names the extra: ``pip install 'twinloop[nion]'``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import importlib.metadata
import logging
import math
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from twinloop.core.config import override
from twinloop.hardware.microscope.fake import SimMicroscope, limits_for
from twinloop.hardware.microscope.protocol import (
    Frame,
    MicroscopeFault,
    MicroscopeLimitError,
    MicroscopeLimits,
)
from twinloop.sim.stem.config import StemConfig

log = logging.getLogger(__name__)

#: IDs of a real Nion UltraSTEM in Nion Swift.
INSTRUMENT_ID = "autostem_controller"
SCAN_ID = "superscan"
#: IDs of Nion's simulator (nionswift-usim), also the defaults of the twinloop usim twin.
USIM_INSTRUMENT_ID = "usim_stem_controller"
USIM_SCAN_ID = "usim_scan_device"
#: The detector channel that carries the HAADF signal.
HAADF = "HAADF"
#: Relative tolerance on the high tension against the config.
VOLTAGE_RTOL = 0.01
#: The packages the ``nion`` extra installs.
NION_PACKAGES = ("nionswift-instrumentation", "nionswift-usim")


def _import_nion() -> SimpleNamespace:
    """Import Nion Swift's instrumentation modules, or say which extra provides them."""
    try:
        from nion.instrumentation import HardwareSource, scan_base, stem_controller
        from nion.utils import Geometry, Registry
    except ImportError as exc:
        raise ImportError(
            f"the nion backend needs Nion Swift's instrumentation packages ({exc}); "
            "install them with: pip install 'twinloop[nion]'"
        ) from exc
    return SimpleNamespace(
        HardwareSource=HardwareSource,
        scan_base=scan_base,
        stem_controller=stem_controller,
        Geometry=Geometry,
        Registry=Registry,
    )


def _import_usim() -> SimpleNamespace:
    """Import nionswift-usim's device modules (the simulated instrument)."""
    nion = _import_nion()
    try:
        from nion.device_kit import ScanDevice as KitScanDevice
        from nion.usim_device import InstrumentDevice
        from nion.usim_device import ScanDevice as UsimScanDevice
    except ImportError as exc:
        raise ImportError(
            f"the usim twin needs nionswift-usim ({exc}); "
            "install it with: pip install 'twinloop[nion]'"
        ) from exc
    nion.KitScanDevice = KitScanDevice
    nion.InstrumentDevice = InstrumentDevice
    nion.UsimScanDevice = UsimScanDevice
    return nion


def package_versions() -> dict[str, str]:
    """Installed versions of the Nion packages (``"missing"`` where absent)."""
    out = {}
    for name in NION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


# clocks ------------------------------------------------------------------------------------------
class Clock(Protocol):
    """The time base the adapter waits on and the usim sample measures exposures with."""

    kind: str

    def now(self) -> float:
        """Seconds on this clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass (the beam settles, or a dwell runs)."""
        ...

    def advance(self, seconds: float) -> None:
        """Account for ``seconds`` the instrument spent on its own (a frame being scanned)."""
        ...


class WallClock:
    """Real time: a real instrument (monotonic seconds, ``time.sleep``)."""

    kind = "wall"

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        if seconds > 0:
            time.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Nothing: the time has really passed."""


class SimulatedClock:
    """Simulated seconds for a twin: waiting advances the clock instantly (thread-safe)."""

    kind = "simulated"

    def __init__(self, start_s: float = 0.0) -> None:
        """Start at ``start_s``."""
        self._t = float(start_s)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Simulated seconds."""
        with self._lock:
            return self._t

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` at once."""
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Advance by ``seconds`` (negative values are refused)."""
        if not seconds >= 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._t += float(seconds)


# coordinates -------------------------------------------------------------------------------------
def view_to_fraction(x: float, y: float, fov: float) -> tuple[float, float]:
    """Twinloop view coordinates (A, y up, centred) -> Nion fractional ``(fy, fx)`` (y down)."""
    return 0.5 - y / fov, 0.5 + x / fov


def fraction_to_view(fy: float, fx: float, fov: float) -> tuple[float, float]:
    """Nion fractional ``(fy, fx)`` (origin top-left, y down) -> view ``(x, y)`` in A."""
    return (fx - 0.5) * fov, (0.5 - fy) * fov


def center_nm_of(dx: float, dy: float) -> tuple[float, float]:
    """Scan offset of a view shifted by ``(dx, dy)`` A (y up) as Nion's ``center_nm`` (y, x)."""
    return -dy / 10.0, dx / 10.0


def offset_of(center_nm: Any) -> tuple[float, float]:
    """Inverse of :func:`center_nm_of`: Nion ``center_nm`` (y, x) -> ``(dx, dy)`` in A."""
    cy, cx = float(center_nm[0]), float(center_nm[1])
    return cx * 10.0, -cy * 10.0


# twin registry: lets the adapter find a twin's clock and truth by instrument id -------------------
_TWINS: dict[str, UsimTwin] = {}
_TWINS_LOCK = threading.Lock()


def find_twin(instrument_id: str, instrument: Any = None) -> UsimTwin | None:
    """The twinloop usim twin registered under ``instrument_id`` (and owning ``instrument``)."""
    with _TWINS_LOCK:
        twin = _TWINS.get(instrument_id)
    if twin is None or (instrument is not None and twin.instrument is not instrument):
        return None
    return twin


# the adapter -------------------------------------------------------------------------------------
class NionMicroscope:
    """A STEM driven through Nion Swift's STEM controller and scan hardware source.

    Args:
        cfg: The STEM config: field of view, dwell bounds, beam-settle time and the voltage the
            instrument must run at.
        instrument_id: ID of the STEM controller registered with Nion Swift's
            ``HardwareSourceManager`` (``"autostem_controller"`` on a Nion UltraSTEM,
            ``"usim_stem_controller"`` on the simulator).
        scan_id: ID of the scan hardware source (``"superscan"``, ``"usim_scan_device"``).
        timeout_s: Longest wait beyond a frame's own duration for a recording to finish,
            and for a running scan to stop.
        clock: Time base for waits; default: the clock of the twinloop usim twin registered
            under ``instrument_id`` if there is one, else the wall clock.
        channel: Detector channel to record (HAADF).

    Raises:
        ImportError: Nion Swift's instrumentation packages are not installed (names the extra).
    """

    kind = "nion"

    def __init__(
        self,
        cfg: StemConfig,
        instrument_id: str = INSTRUMENT_ID,
        scan_id: str = SCAN_ID,
        timeout_s: float = 10.0,
        clock: Clock | None = None,
        channel: str = HAADF,
    ) -> None:
        """Import the vendor packages; nothing is touched until :meth:`connect`."""
        if not isinstance(instrument_id, str) or not instrument_id:
            raise ValueError(f"instrument_id must be a non-empty string, got {instrument_id!r}")
        if not isinstance(scan_id, str) or not scan_id:
            raise ValueError(f"scan_id must be a non-empty string, got {scan_id!r}")
        if isinstance(timeout_s, bool) or not (
            isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0
        ):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        self._nion = _import_nion()
        self.cfg = cfg
        self.limits: MicroscopeLimits = limits_for(cfg)
        self.instrument_id = instrument_id
        self.scan_id = scan_id
        self.timeout_s = float(timeout_s)
        self.channel = channel
        self._clock_arg = clock
        self.clock: Clock = clock if clock is not None else WallClock()
        self._instrument: Any = None
        self._scan: Any = None
        self._twin: UsimTwin | None = None
        self._channel_index = -1
        self._offset = np.zeros(2)  # scan offset (A, y up): Nion's center_nm
        self._t0 = 0.0
        self._frames = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # lifecycle ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the STEM controller and the scan source were found."""
        return self._instrument is not None

    def connect(self) -> None:
        """Find the STEM controller and scan source, check the voltage, blank the beam.

        Raises:
            MicroscopeFault: An ID is not registered, the HAADF channel is missing, or the
                high tension differs from the config.
        """
        if self.connected:
            return
        manager = self._nion.HardwareSource.HardwareSourceManager()
        instrument = manager.get_instrument_by_id(self.instrument_id)
        if instrument is None:
            raise MicroscopeFault(
                f"no STEM controller {self.instrument_id!r} is registered with Nion Swift "
                f"(registered: {sorted(manager.get_all_instrument_ids()) or 'none'}); "
                "pass instrument_id=<the STEM controller's ID>"
            )
        scan = manager.get_hardware_source_for_hardware_source_id(self.scan_id)
        if scan is None or not hasattr(scan, "record_immediate"):
            raise MicroscopeFault(
                f"no scan hardware source {self.scan_id!r} is registered with Nion Swift "
                f"(registered: {sorted(manager.get_all_hardware_source_ids()) or 'none'}); "
                "pass scan_id=<the scan device's ID>"
            )
        names = [scan.get_channel_name(i) for i in range(scan.channel_count)]
        if self.channel not in names:
            raise MicroscopeFault(
                f"scan source {self.scan_id!r} has no {self.channel!r} channel (channels: {names})"
            )
        self._instrument, self._scan = instrument, scan
        self._channel_index = names.index(self.channel)
        self._twin = find_twin(self.instrument_id, instrument)
        if self._clock_arg is None:
            self.clock = self._twin.clock if self._twin is not None else WallClock()
        try:
            with self._safe("connect"):
                self._blank_checked()
                self._check_voltage()
                current = self.current_na
                if not math.isclose(current, self.cfg.physics.beam_current_na, rel_tol=0.1):
                    log.warning(
                        "the instrument's beam current is %.4g nA but the config says %.4g nA",
                        current,
                        self.cfg.physics.beam_current_na,
                    )
                self._stop_scan()
                self._offset[:] = offset_of(scan.get_current_frame_parameters().center_nm)
                self._set_view()
        except BaseException:
            self._instrument = self._scan = None
            raise
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nion-rec")
        self._t0 = self.clock.now()
        self._frames = 0

    def close(self) -> None:
        """Blank the beam, stop any scan and release the instrument (idempotent)."""
        if not self.connected:
            return
        try:
            self.blank()
            self._stop_scan()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            self._instrument = self._scan = None
            self._twin = None

    def safe_state(self) -> None:
        """Blank the beam."""
        self.blank()

    @property
    def clock_s(self) -> float:
        """Seconds on the adapter's clock since :meth:`connect`."""
        return self.clock.now() - self._t0 if self.connected else 0.0

    # instrument state -------------------------------------------------------------------------
    def _get(self, name: str) -> float:
        ok, value = self._require().TryGetVal(name)
        if not ok or value is None:
            raise MicroscopeFault(f"the STEM controller has no control {name!r}")
        return float(value)

    def _set(self, name: str, value: float) -> None:
        if not self._require().SetVal(name, float(value)):
            raise MicroscopeFault(f"the STEM controller refused {name} = {value!r}")

    @property
    def voltage_kev(self) -> float:
        """High tension ("EHT", V) in kV."""
        return self._get("EHT") / 1e3

    @property
    def current_na(self) -> float:
        """Probe current ("BeamCurrent", A) in nA."""
        return self._get("BeamCurrent") * 1e9

    @property
    def blanked(self) -> bool:
        """Whether the beam is blanked ("C_Blank")."""
        return self._get("C_Blank") != 0.0

    def _check_voltage(self) -> None:
        kv, want = self.voltage_kev, self.cfg.physics.beam_energy_kev
        if not math.isclose(kv, want, rel_tol=VOLTAGE_RTOL):
            raise MicroscopeFault(
                f"the instrument runs at EHT = {kv:.4g} kV but the config's rate model is for "
                f"{want:.4g} kV (tolerance {VOLTAGE_RTOL:.0%}); set beam_energy_kev or the EHT"
            )

    def _require(self) -> Any:
        if self._instrument is None:
            raise MicroscopeFault(f"the nion microscope {self.instrument_id!r} is not connected")
        return self._instrument

    # commands -----------------------------------------------------------------------------------
    def blank(self) -> None:
        """Blank the beam; best effort when not connected."""
        if self._instrument is None:
            return
        self._blank_checked()

    def _blank_checked(self) -> None:
        self._set("C_Blank", 1.0)
        if not self.blanked:
            raise MicroscopeFault("C_Blank = 1 was sent but the beam does not read back blanked")

    def unblank(self) -> None:
        """Unblank the beam (at the parked probe)."""
        self._set("C_Blank", 0.0)

    def park(self, x_angstrom: float, y_angstrom: float) -> None:
        """Blank, stop any scan, park the probe at ``(x, y)`` A in the view, let it settle."""
        with self._safe("park"):
            self.limits.check_probe(x_angstrom, y_angstrom)
            inst = self._require()
            self._blank_checked()
            self._stop_scan()
            fy, fx = view_to_fraction(float(x_angstrom), float(y_angstrom), self._fov)
            inst.set_probe_position(self._nion.Geometry.FloatPoint(y=fy, x=fx))
            pos = inst.probe_position
            if inst.probe_state != "parked" or pos is None:
                raise MicroscopeFault(
                    f"the probe did not park: probe_state = {inst.probe_state!r}, "
                    f"probe_position = {pos!r}"
                )
            if abs(pos.x - fx) > 1e-9 or abs(pos.y - fy) > 1e-9:
                raise MicroscopeFault(
                    f"the probe parked at fractional (y, x) = ({pos.y:.6g}, {pos.x:.6g}) instead "
                    f"of ({fy:.6g}, {fx:.6g})"
                )
            self.clock.sleep(self.cfg.microscope.beam_settle_s)

    def dwell(self, seconds: float) -> None:
        """Unblank the beam at the parked probe for ``seconds``, then blank it."""
        with self._safe("dwell"):
            self.limits.check_dwell(seconds)
            inst = self._require()
            if inst.probe_state != "parked" or inst.probe_position is None:
                raise MicroscopeFault(
                    f"dwell needs a parked probe (probe_state = {inst.probe_state!r}, "
                    f"probe_position = {inst.probe_position!r}); call park() first"
                )
            try:
                self.unblank()
                self.clock.sleep(float(seconds))
            finally:
                self._blank_checked()

    def acquire(self, pixels: int, pixel_time_s: float) -> Frame:
        """Record one ``pixels`` x ``pixels`` HAADF frame with ``record_immediate``."""
        with self._safe("acquire"):
            self.limits.check_acquire(pixels, pixel_time_s)
            self._require()
            self._stop_scan()
            fp = self._frame_parameters(int(pixels), float(pixel_time_s))
            expected = pixels * pixels * pixel_time_s
            start = self.clock.now()
            try:
                self.unblank()
                xdatas = self._record(fp, expected)
            finally:
                self._blank_checked()
            duration = self.clock.now() - start
            image, meta = self._pick_channel(xdatas, int(pixels))
        self._frames += 1
        scan_meta = meta.get("scan", {}) if isinstance(meta, dict) else {}
        hw_meta = meta.get("hardware_source", {}) if isinstance(meta, dict) else {}
        return Frame(
            np.ascontiguousarray(np.flipud(image), dtype=np.float32),
            {
                "fov_angstrom": self.limits.fov_angstrom,
                "pixel_time_s": float(pixel_time_s),
                "start_s": start - self._t0,
                "duration_s": duration,
                "frame_index": self._frames,
                "channel": self.channel,
                "voltage_kev": self.voltage_kev,
                "current_na": self.current_na,
                "scan_offset_angstrom": [float(v) for v in self._offset],
                "nion_scan_id": str(scan_meta.get("scan_id", "")),
                "nion_frame_index": hw_meta.get("frame_index"),
                "hardware_source_id": self.scan_id,
            },
        )

    def shift_view(self, dx_angstrom: float, dy_angstrom: float) -> None:
        """Move the scan field by ``(dx, dy)`` A through the scan offset; let the beam settle."""
        with self._safe("shift_view"):
            self.limits.check_shift(dx_angstrom, dy_angstrom)
            self._require()
            self._blank_checked()
            self._stop_scan()
            self._offset += (float(dx_angstrom), float(dy_angstrom))
            self._set_view()
            self.clock.sleep(self.cfg.microscope.beam_settle_s)

    def reset_sample(self, seed: int | None) -> bool:
        """Nion's API cannot replace the sample: return False (episodes continue on it)."""
        return False

    # helpers ------------------------------------------------------------------------------------
    @property
    def _fov(self) -> float:
        return self.limits.fov_angstrom

    @contextlib.contextmanager
    def _safe(self, op: str) -> Iterator[None]:
        """Blank on any error; turn vendor exceptions into :class:`MicroscopeFault`."""
        try:
            yield
        except (MicroscopeLimitError, MicroscopeFault):
            self._blank_quietly(op)
            raise
        except Exception as exc:
            self._blank_quietly(op)
            raise MicroscopeFault(
                f"Nion Swift failed during {op}: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:  # KeyboardInterrupt during a dwell: still leave the beam safe
            self._blank_quietly(op)
            raise

    def _blank_quietly(self, op: str) -> None:
        try:
            self.blank()
        except Exception:
            log.exception("could not blank the beam after %s failed", op)

    def _stop_scan(self) -> None:
        """Stop a running (view) scan; stopping is asynchronous, so poll ``is_playing``."""
        scan = self._scan
        if scan is None or not (scan.is_playing or scan.is_recording):
            return
        scan.stop_playing()
        deadline = time.monotonic() + self.timeout_s
        while scan.is_playing or scan.is_recording:
            if time.monotonic() > deadline:
                scan.abort_playing()
                raise MicroscopeFault(
                    f"scan {self.scan_id!r} did not stop within timeout_s = {self.timeout_s:g} s"
                )
            time.sleep(0.01)

    def _frame_parameters(self, pixels: int, pixel_time_s: float) -> Any:
        fp = self._scan.get_current_frame_parameters()
        fp.pixel_size = self._nion.Geometry.IntSize(h=pixels, w=pixels)  # "size" is ignored
        fp.pixel_time_us = pixel_time_s * 1e6
        fp.fov_nm = self._fov / 10.0
        fp.center_nm = center_nm_of(*self._offset)
        fp.rotation_rad = 0.0
        for name in (
            "subscan_pixel_size",
            "subscan_fractional_size",
            "subscan_fractional_center",
            "subscan_rotation",
        ):
            fp.clear_parameter(name)
        fp.enabled_channel_indexes = [self._channel_index]
        return fp

    def _set_view(self) -> None:
        """Make the scan context (what ``probe_position`` is a fraction of) our view."""
        n = self.cfg.imaging.frame_pixels
        fp = self._frame_parameters(n, max(self.cfg.pixel_time_s, self.limits.pixel_time_s[0]))
        self._scan.set_current_frame_parameters(fp)

    def _record(self, fp: Any, expected_s: float) -> list[Any]:
        assert self._executor is not None
        timeout = expected_s + self.timeout_s
        future = self._executor.submit(self._scan.record_immediate, fp, self.timeout_s)
        try:
            return list(future.result(timeout=timeout))
        except concurrent.futures.TimeoutError:
            try:
                self._scan.abort_recording(sync_timeout=self.timeout_s)
            except Exception:
                log.exception("aborting the recording failed")
            # the worker may stay stuck in Nion's call: leave it behind, use a fresh one
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nion-rec")
            raise MicroscopeFault(
                f"scan {self.scan_id!r} did not deliver a frame within {timeout:.3g} s "
                f"(frame {expected_s:.3g} s + timeout_s = {self.timeout_s:g} s)"
            ) from None

    def _pick_channel(self, xdatas: list[Any], pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
        found = []
        for xd in xdatas:
            if xd is None:
                continue
            meta = dict(xd.metadata)
            name = meta.get("hardware_source", {}).get("channel_name")
            found.append(name)
            if name == self.channel:
                data = np.asarray(xd.data)
                if data.shape != (pixels, pixels):
                    raise MicroscopeFault(
                        f"{self.channel} frame has shape {data.shape}, expected "
                        f"({pixels}, {pixels})"
                    )
                return data, meta
        raise MicroscopeFault(f"the recording has no {self.channel} channel (got {found})")

    # introspection -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What the instrument reports (the same keys as :meth:`.SimMicroscope.state`)."""
        inst = self._require()
        pos = inst.probe_position
        probe = fraction_to_view(pos.y, pos.x, self._fov) if pos is not None else (math.nan,) * 2
        return {
            "fov_angstrom": self._fov,
            "voltage_kev": self.voltage_kev,
            "current_na": self.current_na,
            "probe_angstrom": [float(probe[0]), float(probe[1])],
            "probe_state": inst.probe_state,
            "blanked": self.blanked,
            "clock_s": self.clock_s,
        }

    def truth(self) -> dict[str, Any]:
        """The twin's privileged state on a twinloop usim twin; ``{}`` on an instrument."""
        return self._twin.sim.truth() if self._twin is not None else {}

    def identity(self) -> dict[str, Any]:
        """Kind, Nion IDs, package versions and what sample sits in the instrument."""
        return {
            "kind": self.kind,
            "instrument_id": self.instrument_id,
            "scan_id": self.scan_id,
            "channel": self.channel,
            "clock": self.clock.kind,
            "sample": "twinloop usim twin" if self._twin is not None else "instrument",
            "versions": package_versions(),
        }


# the usim twin -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampleEvent:
    """One thing the sample did, for tests and debugging.

    Attributes:
        kind: ``"park"``, ``"dwell"``, ``"frame"``, ``"dark_frame"`` or ``"shift"``.
        at_s: Clock time when it was applied.
        seconds: Exposure (dwell) or frame duration (s); 0 otherwise.
        position_angstrom: Probe ``(x, y)`` in the view (park, dwell) or the shift ``(dx, dy)``.
    """

    kind: str
    at_s: float
    seconds: float = 0.0
    position_angstrom: tuple[float, float] = (math.nan, math.nan)


class TwinloopSample:
    """usim's scan-data generator backed by twinloop's simulated sample.

    Nion's usim calls :meth:`generate_scan_data` at the start of every frame; the sample also
    listens to the STEM controller (probe state and position, ``C_Blank``) once
    :meth:`attach` ties it to the instrument. See the module docstring for the mapping.

    Args:
        cfg: The STEM config of the sample (physics, imaging, field of view).
        seed: Seed of the simulated sample.
        clock: The time base exposures are measured on.
    """

    def __init__(self, cfg: StemConfig, seed: int, clock: Clock) -> None:
        """Make the simulated sample (a :class:`~.fake.SimMicroscope`) and reset it."""
        # The sample receives exposures of any length: open the simulated instrument's dwell
        # bounds (the adapter checks the real limits before anything reaches Nion).
        inner = override(cfg, dwell_min_s=1e-9, dwell_max_s=3600.0)
        self.cfg = cfg
        self.sim = SimMicroscope(inner)
        self.sim.reset_sample(int(seed))
        self.clock = clock
        self.events: collections.deque[SampleEvent] = collections.deque(maxlen=1000)
        self._lock = threading.RLock()
        self._instrument: Any = None
        self._listeners: list[Any] = []
        self._blanked = True
        self._scanning = False
        self._probe: tuple[float, float] | None = None  # fractional (fy, fx) where parked
        self._mark = clock.now()  # exposure before this time is accounted for
        self._view = np.zeros(2)  # scan offset (A, y up) applied to the simulated view
        self._warned: set[str] = set()

    @property
    def fov_angstrom(self) -> float:
        """The simulated field of view."""
        return self.cfg.microscope.fov_angstrom

    def attach(self, instrument: Any) -> None:
        """Follow the STEM controller's probe and blanker."""
        self._instrument = instrument
        self._blanked = bool(instrument.GetVal("C_Blank", 1.0))
        pos = instrument.probe_position
        self._probe = (pos.y, pos.x) if pos is not None else None
        self._scanning = instrument.probe_state == "scanning"
        self._listeners = [
            instrument.probe_state_changed_event.listen(self._on_probe),
            instrument.property_changed_event.listen(self._on_property),
        ]

    def detach(self) -> None:
        """Stop following the instrument."""
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        self._instrument = None

    # events (Nion threads) -------------------------------------------------------------------
    def _on_property(self, name: str) -> None:
        if name != "is_blanked" or self._instrument is None:
            return
        blanked = bool(self._instrument.GetVal("C_Blank", 1.0))
        with self._lock:
            self._expose()
            self._blanked = blanked

    def _on_probe(self, probe_state: str, probe_position: Any) -> None:
        with self._lock:
            self._expose()
            self._scanning = probe_state == "scanning"
            new = (probe_position.y, probe_position.x) if probe_position is not None else None
            if not self._scanning and new is not None and new != self._probe:
                self._sync_view()
                x, y = fraction_to_view(new[0], new[1], self.fov_angstrom)
                self.sim.park(x, y)
                self.events.append(SampleEvent("park", self.clock.now(), 0.0, (x, y)))
            self._probe = new if new is not None else self._probe
            self._mark = self.clock.now()

    def _expose(self) -> None:
        """Run the dwell physics for the unblanked, parked time since the last mark."""
        now = self.clock.now()
        dt, self._mark = now - self._mark, now
        if self._blanked or self._scanning or self._probe is None or dt <= 1e-9:
            return
        self._sync_view()
        self._check_beam()
        x, y = fraction_to_view(self._probe[0], self._probe[1], self.fov_angstrom)
        # the probe stays where the sample was parked; dwell physics at that position
        left = dt
        while left > 1e-9:
            step = min(left, 3600.0)
            self.sim.dwell(step)
            left -= step
        self.events.append(SampleEvent("dwell", now, dt, (x, y)))

    def _sync_view(self, center_nm: Any = None) -> None:
        """Apply a new scan offset to the simulated view."""
        if center_nm is None:
            if self._instrument is None:
                return
            center_nm = self._instrument.scan_context.center_nm
        target = np.array(offset_of(center_nm))
        delta = target - self._view
        if float(np.hypot(*delta)) < 1e-9:
            return
        n = max(1, math.ceil(float(np.hypot(*delta)) / self.sim.limits.shift_angstrom))
        for _ in range(n):
            self.sim.shift_view(float(delta[0]) / n, float(delta[1]) / n)
        self._view = target
        self.events.append(
            SampleEvent("shift", self.clock.now(), 0.0, (float(delta[0]), float(delta[1])))
        )

    def _check_beam(self) -> None:
        """Warn once when Nion's EHT or BeamCurrent departs from what the physics assume."""
        inst = self._instrument
        if inst is None:
            return
        for name, value, want, unit in (
            ("EHT", inst.GetVal("EHT", 0.0) / 1e3, self.cfg.physics.beam_energy_kev, "kV"),
            (
                "BeamCurrent",
                inst.GetVal("BeamCurrent", 0.0) * 1e9,
                self.cfg.physics.beam_current_na,
                "nA",
            ),
        ):
            if not math.isclose(value, want, rel_tol=0.01) and name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "Nion %s is %.4g %s; the twinloop sample's physics run at %.4g %s",
                    name,
                    value,
                    unit,
                    want,
                    unit,
                )

    # the usim scan-data generator interface --------------------------------------------------
    def generate_scan_data(self, instrument: Any, scan_frame_parameters: Any) -> np.ndarray:
        """Render one frame of the simulated sample (row 0 at the top, as Nion expects).

        Args:
            instrument: The usim instrument (STEM controller) scanning the sample.
            scan_frame_parameters: ``size`` (h, w), ``pixel_time_us``, ``fov_nm``,
                ``center_nm``, ``rotation_rad`` of the frame.

        Returns:
            ``(h, w)`` float32 detected electrons per pixel.
        """
        p = scan_frame_parameters
        h, w = int(p.size.height), int(p.size.width)
        pixel_time_s = float(p.pixel_time_us) * 1e-6
        with self._lock:
            self._expose()
            duration = h * (w * pixel_time_s + self.cfg.imaging.flyback_us * 1e-6)
            problem = self._frame_problem(h, w, p)
            if problem:
                if problem not in self._warned:
                    self._warned.add(problem)
                    log.error("twinloop usim sample cannot render this frame: %s", problem)
                self.clock.advance(duration)
                return np.zeros((h, w), dtype=np.float32)
            self._sync_view(p.center_nm)
            if self._blanked:
                self.clock.advance(duration)
                self.events.append(SampleEvent("dark_frame", self.clock.now(), duration))
                self._mark = self.clock.now()
                return np.zeros((h, w), dtype=np.float32)
            frame = self.sim.acquire(h, pixel_time_s)
            self.clock.advance(frame.metadata["duration_s"])
            self.events.append(SampleEvent("frame", self.clock.now(), frame.metadata["duration_s"]))
            self._mark = self.clock.now()
            return np.ascontiguousarray(np.flipud(frame.image), dtype=np.float32)

    def _frame_problem(self, h: int, w: int, p: Any) -> str:
        if h != w:
            return f"frame {h} x {w} is not square"
        try:
            self.sim.limits.check_acquire(h, float(p.pixel_time_us) * 1e-6)
        except MicroscopeLimitError as exc:
            return str(exc)
        fov = float(p.fov_nm) * 10.0
        if not math.isclose(fov, self.fov_angstrom, rel_tol=1e-6):
            return f"field of view {fov:g} A differs from the sample's {self.fov_angstrom:g} A"
        if float(p.rotation_rad or 0.0) != 0.0:
            return f"scan rotation {p.rotation_rad} rad is not supported"
        return ""

    def truth(self) -> dict[str, Any]:
        """The simulated sample's privileged state."""
        return self.sim.truth()


class UsimTwin:
    """Nion's usim instrument and scan device with the twinloop sample, registered headless.

    Made by :func:`make_usim_with_twinloop_sample`; use as a context manager or call
    :meth:`close` to unregister everything.

    Attributes:
        instrument: The usim STEM controller (``nion.usim_device.InstrumentDevice.Instrument``).
        scan: The scan hardware source (``scan_base.ConcreteScanHardwareSource``).
        sample: The :class:`TwinloopSample` behind the scan device.
        sim: The sample's :class:`~.fake.SimMicroscope` (its ``truth()`` is the ground truth).
        clock: The twin's clock (the adapter picks it up by ``instrument_id``).
        instrument_id: ID of the STEM controller.
        scan_id: ID of the scan hardware source.
    """

    def __init__(
        self,
        nion: SimpleNamespace,
        instrument: Any,
        scan: Any,
        sample: TwinloopSample,
        instrument_id: str,
        scan_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Hold the registered objects (see :func:`make_usim_with_twinloop_sample`)."""
        self._nion = nion
        self.instrument = instrument
        self.scan = scan
        self.sample = sample
        self.sim = sample.sim
        self.clock = sample.clock
        self.instrument_id = instrument_id
        self.scan_id = scan_id
        self._loop = loop
        self._closed = False

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments for ``twinloop.make(..., backend="nion", **options)``."""
        return {"instrument_id": self.instrument_id, "scan_id": self.scan_id}

    def close(self) -> None:
        """Stop scanning, unregister the scan source and the instrument (idempotent)."""
        if self._closed:
            return
        self._closed = True
        nion = self._nion
        manager = nion.HardwareSource.HardwareSourceManager()
        try:
            if self.scan.is_playing or self.scan.is_recording:
                self.scan.abort_playing(sync_timeout=5.0)
        finally:
            with _TWINS_LOCK:
                if _TWINS.get(self.instrument_id) is self:
                    del _TWINS[self.instrument_id]
            if self.scan in manager.hardware_sources:
                manager.unregister_hardware_source(self.scan)
            nion.Registry.unregister_component(
                self.scan, {"hardware_source", "scan_hardware_source"}
            )
            self.scan.close()
            self.sample.detach()
            nion.Registry.unregister_component(
                self.instrument, {"instrument_controller", "stem_controller"}
            )
            if manager.get_instrument_by_id(self.instrument_id) is self.instrument:
                manager.unregister_instrument(self.instrument_id)
            self.instrument.close()
            if self._loop is not None:
                self._loop.close()

    def __enter__(self) -> UsimTwin:  # noqa: D105
        return self

    def __exit__(self, *exc: object) -> None:  # noqa: D105
        self.close()


def _with_event_loop(make: Any) -> tuple[Any, asyncio.AbstractEventLoop]:
    """Call ``make()`` where ``asyncio.get_event_loop()`` answers a fresh loop.

    Nion's scan hardware source asks asyncio for the current event loop when it is made. The
    call runs in a short-lived thread with its own loop, so the caller's thread keeps its
    asyncio state (no loop is set, replaced or closed there).
    """
    out: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        out["loop"] = loop
        asyncio.set_event_loop(loop)
        try:
            out["value"] = make()
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc
        finally:
            asyncio.set_event_loop(None)

    thread = threading.Thread(target=run, name="nion-construct", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        out["loop"].close()
        raise out["error"]
    return out["value"], out["loop"]


def make_usim_with_twinloop_sample(
    cfg: StemConfig,
    seed: int = 0,
    *,
    instrument_id: str = USIM_INSTRUMENT_ID,
    scan_id: str = USIM_SCAN_ID,
    clock: Clock | None = None,
) -> UsimTwin:
    """Build Nion's simulated STEM headless, with twinloop's simulated sample in it.

    The usim value manager, STEM controller (``InstrumentDevice.Instrument``), scan device
    and a ``ConcreteScanHardwareSource`` are made directly (never through usim's
    ``AcquisitionContextConfiguration``, which would delete and recreate ``./test_data``) and
    registered with Nion's ``Registry`` and ``HardwareSourceManager`` under the given IDs. The
    high tension and beam current are set to the config's, the beam is blanked and the probe
    parked at the centre.

    Args:
        cfg: The STEM config of the sample (it should be the env's config).
        seed: Seed of the simulated sample.
        instrument_id: ID of the STEM controller.
        scan_id: ID of the scan hardware source.
        clock: Time base (default: a new :class:`SimulatedClock`).

    Returns:
        The twin; pass ``twin.backend_options()`` to ``twinloop.make(..., backend="nion")``.

    Raises:
        ImportError: nionswift-usim / nionswift-instrumentation are missing.
        ValueError: An instrument or scan source with these IDs is already registered.
    """
    nion = _import_usim()
    manager = nion.HardwareSource.HardwareSourceManager()
    if manager.get_instrument_by_id(instrument_id) is not None:
        raise ValueError(f"a Nion instrument {instrument_id!r} is already registered")
    if manager.get_hardware_source_for_hardware_source_id(scan_id) is not None:
        raise ValueError(f"a Nion hardware source {scan_id!r} is already registered")
    clock = clock if clock is not None else SimulatedClock()
    sample = TwinloopSample(cfg, seed, clock)
    instrument = nion.InstrumentDevice.Instrument(
        instrument_id,
        nion.InstrumentDevice.ValueManager(),
        nion.InstrumentDevice.AxisManager(),
        sample,
    )
    instrument.SetVal("EHT", cfg.physics.beam_energy_kev * 1e3)
    instrument.SetVal("BeamCurrent", cfg.physics.beam_current_na * 1e-9)
    instrument.SetVal("C_Blank", 1.0)  # usim starts unblanked; the twin starts safe
    instrument.set_probe_position(nion.Geometry.FloatPoint(y=0.5, x=0.5))
    sample.attach(instrument)

    device = nion.KitScanDevice.Device(
        scan_id, "twinloop uSim Scan", instrument, nion.UsimScanDevice.ScanBoxSimulator(sample)
    )
    n = cfg.imaging.frame_pixels
    pixel_time_us = max(cfg.pixel_time_s, 1e-7) * 1e6
    mode = nion.KitScanDevice.ScanFrameParameters(
        pixel_size=(n, n), pixel_time_us=pixel_time_us, fov_nm=cfg.microscope.fov_angstrom / 10
    )
    settings = nion.scan_base.ScanSettings(
        scan_id,
        [nion.scan_base.ScanSettingsMode("Record", "record", mode)],
        lambda d: nion.KitScanDevice.ScanFrameParameters(d),
        0,
        0,
    )
    scan, loop = _with_event_loop(
        lambda: nion.scan_base.ConcreteScanHardwareSource(instrument, device, settings, None)
    )
    nion.Registry.register_component(instrument, {"instrument_controller", "stem_controller"})
    if manager.get_instrument_by_id(instrument_id) is None:  # stem_controller's listener missed
        manager.register_instrument(instrument_id, instrument)
    nion.Registry.register_component(scan, {"hardware_source", "scan_hardware_source"})
    manager.register_hardware_source(scan)
    twin = UsimTwin(nion, instrument, scan, sample, instrument_id, scan_id, loop)
    with _TWINS_LOCK:
        _TWINS[instrument_id] = twin
    return twin


__all__ = [
    "HAADF",
    "INSTRUMENT_ID",
    "SCAN_ID",
    "USIM_INSTRUMENT_ID",
    "USIM_SCAN_ID",
    "Clock",
    "NionMicroscope",
    "SampleEvent",
    "SimulatedClock",
    "TwinloopSample",
    "UsimTwin",
    "WallClock",
    "fraction_to_view",
    "make_usim_with_twinloop_sample",
    "package_versions",
    "view_to_fraction",
]
