"""The registry table: every env id twinloop provides, with lazy entry points.

This is the one place that lists env ids; ``twinloop list`` and ``gymnasium.make`` read it.
Entry points are strings, so nothing here imports a simulator or a vendor SDK.
"""

from __future__ import annotations

from twinloop.core.registry import BackendSpec, EnvSpec, registry

_STEM = "twinloop.sim.stem.env"
_MIC = "twinloop.hardware.microscope"

registry.register(
    EnvSpec(
        id="twinloop/StemSteer-v0",
        system="stem",
        entry_point=f"{_STEM}:make_env",
        vector_entry_point=f"{_STEM}:make_vec_env",
        config_entry_point="twinloop.sim.stem.config:StemConfig",
        backends=(
            BackendSpec(
                name="sim",
                entry_point=f"{_STEM}:make_sim_backend",
                deterministic=True,
                description="in-process STEM kernel",
            ),
            BackendSpec(
                name="sim-image",
                entry_point=f"{_MIC}:make_sim_image_backend",
                deterministic=True,
                description="in-process simulated microscope seen through frames + atom finding",
            ),
            BackendSpec(
                name="remote",
                entry_point=f"{_MIC}:make_remote_backend",
                deterministic=False,
                options=("address", "token", "timeout_s"),
                extra="microscope",
                address_format="tcp://{host}:{port}",
                description="a microscope twin (`twinloop serve microscope`) over ZeroMQ",
            ),
            BackendSpec(
                name="nion",
                entry_point=f"{_MIC}:make_nion_backend",
                deterministic=False,
                options=("instrument_id", "scan_id", "timeout_s", "clock", "channel"),
                extra="nion",
                description="Nion Swift STEM controller + scan device",
            ),
        ),
        description="Steer a Si dopant through graphene to a goal site with a parked STEM beam",
    )
)

_BALLOON = "twinloop.sim.balloon.env"

registry.register(
    EnvSpec(
        id="twinloop/BalloonStationKeeping-v0",
        system="balloon",
        entry_point=f"{_BALLOON}:make_env",
        vector_entry_point=f"{_BALLOON}:make_vec_env",
        config_entry_point="twinloop.sim.balloon.config:BalloonConfig",
        backends=(
            BackendSpec(
                name="sim",
                entry_point=f"{_BALLOON}:make_sim_backend",
                deterministic=True,
                description="in-process balloon kernel and generative winds",
            ),
            BackendSpec(
                name="mavlink",
                entry_point="twinloop.hardware.balloon.backend:make_mavlink_backend",
                deterministic=False,
                options=(
                    "address",
                    "ack_timeout_s",
                    "retries",
                    "connect_timeout_s",
                    "frame_timeout_s",
                    "heartbeat_s",
                ),
                address_format="udp:{host}:{port}",
                extra="balloon",
                description="a flight controller (or `twinloop serve balloon`) over MAVLink/UDP",
            ),
        ),
        description="Keep a superpressure balloon within 50 km of a station for 48 h (BLE task)",
    )
)
