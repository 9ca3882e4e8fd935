"""Microscope backends for ``twinloop/StemSteer-v0``: frames in, the symbolic measurement out.

Backend factories (named in the registry table):

* ``sim-image``: the simulated instrument in-process, through the image pipeline;
* ``remote``: a twin served by ``twinloop serve microscope`` (``address=``, ``token=``,
  ``timeout_s=``);
* ``nion``: Nion Swift's instrumentation API (optional extra ``nion``).

All three find the Si, its neighbours and (with ``n_holes > 0``) the sample's holes in the
frames (:mod:`twinloop.sim.stem.perception`), giving the ``sim`` backend's measurement layout.
"""

from __future__ import annotations

from typing import Any

from twinloop.sim.stem.config import StemConfig


def make_sim_image_backend(cfg: StemConfig) -> Any:
    """The simulated instrument in-process, observed through frames and atom finding."""
    from twinloop.hardware.microscope.backend import MicroscopeBackend
    from twinloop.hardware.microscope.fake import SimMicroscope

    return MicroscopeBackend(cfg, SimMicroscope(cfg), kind="sim-image", deterministic=True)


def make_remote_backend(
    cfg: StemConfig,
    address: str = "tcp://127.0.0.1:5555",
    token: str | None = None,
    timeout_s: float = 10.0,
) -> Any:
    """A microscope twin (or any server speaking protocol v1) at ``address``."""
    from twinloop.hardware.microscope.backend import MicroscopeBackend
    from twinloop.hardware.microscope.remote import RemoteMicroscope

    mic = RemoteMicroscope(address=address, token=token, timeout_s=timeout_s)
    return MicroscopeBackend(cfg, mic, kind="remote", deterministic=True)


def make_nion_backend(cfg: StemConfig, **options: Any) -> Any:
    """Nion Swift's STEM controller and scan device (needs the ``nion`` extra)."""
    from twinloop.hardware.microscope.backend import MicroscopeBackend
    from twinloop.hardware.microscope.nion import NionMicroscope

    return MicroscopeBackend(cfg, NionMicroscope(cfg, **options), kind="nion")
