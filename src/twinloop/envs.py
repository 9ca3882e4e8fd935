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

_DMC = "twinloop.sim.locomotion.env"

# The DeepMind Control Suite tasks on the MJCF models shipped inside dm_control (issue 15).
for _domain, _task, _what in (
    ("cheetah", "run", "Planar cheetah: run forward (reward saturates at 10 m/s)"),
    ("walker", "stand", "Planar walker: stand up and stay upright"),
    ("walker", "walk", "Planar walker: walk forward at 1 m/s"),
    ("walker", "run", "Planar walker: run forward at 8 m/s"),
    ("hopper", "stand", "Planar hopper: stand upright with small controls"),
    ("hopper", "hop", "Planar hopper: hop forward at 2 m/s"),
    ("humanoid", "stand", "3D humanoid (21 actuators): stand up and stay still"),
    ("humanoid", "walk", "3D humanoid (21 actuators): walk at 1 m/s"),
    ("humanoid", "run", "3D humanoid (21 actuators): run at 10 m/s"),
    ("quadruped", "walk", "3D quadruped (12 actuators): walk forward at 0.5 m/s"),
    ("quadruped", "run", "3D quadruped (12 actuators): run forward at 5 m/s"),
):
    registry.register(
        EnvSpec(
            id=f"twinloop/dmc-{_domain}-{_task}-v0",
            system="locomotion",
            entry_point=f"{_DMC}:make_env",
            vector_entry_point=f"{_DMC}:make_vec_env",
            config_entry_point=(
                f"twinloop.sim.locomotion.config:{_domain.capitalize()}{_task.capitalize()}Config"
            ),
            backends=(
                BackendSpec(
                    name="sim",
                    entry_point=f"{_DMC}:make_sim_backend",
                    deterministic=True,
                    extra="locomotion",
                    description="C MuJoCo on dm_control's model, stepped as dm_control does",
                ),
            ),
            description=f"DeepMind Control Suite {_domain}-{_task}: {_what}",
        )
    )

_QUAD = "twinloop.sim.locomotion.velocity"

# Velocity tracking on our own Go1-sized MJCF with the sim-to-real effects (issue 15).
registry.register(
    EnvSpec(
        id="twinloop/QuadrupedVelocity-v0",
        system="locomotion",
        entry_point=f"{_QUAD}:make_env",
        vector_entry_point=f"{_QUAD}:make_vec_env",
        config_entry_point="twinloop.sim.locomotion.velocity_config:QuadrupedVelocityConfig",
        backends=(
            BackendSpec(
                name="sim",
                entry_point=f"{_QUAD}:make_sim_backend",
                deterministic=True,
                extra="locomotion",
                description="C MuJoCo on a Go1-sized quadruped, PD at 200 Hz, randomised per reset",
            ),
            BackendSpec(
                name="robot",
                entry_point="twinloop.hardware.robot:make_robot_backend",
                deterministic=False,
                options=("address", "token", "timeout_s", "retries"),
                extra="locomotion,microscope",
                address_format="tcp://{host}:{port}",
                description="a robot twin (`twinloop serve robot`) over the joint-level protocol",
            ),
            BackendSpec(
                name="lerobot",
                entry_point="twinloop.hardware.lerobot:make_lerobot_backend",
                deterministic=False,
                options=(
                    "robot",
                    "mapping",
                    "timeout_s",
                    "calibrate",
                    "pace",
                    "safe_pose",
                    "reset_hook",
                ),
                extra="locomotion",
                description="any LeRobot Robot object (robot=...) through a declared key mapping",
            ),
        ),
        description="Go1-sized quadruped: track a commanded forward/lateral/yaw velocity",
    )
)

_REARRANGE = "twinloop.sim.rearrange.env"

registry.register(
    EnvSpec(
        id="twinloop/LangRearrange-v0",
        system="rearrange",
        entry_point=f"{_REARRANGE}:make_env",
        vector_entry_point=f"{_REARRANGE}:make_vec_env",
        config_entry_point="twinloop.sim.rearrange.config:RearrangeConfig",
        backends=(
            BackendSpec(
                name="sim",
                entry_point=f"{_REARRANGE}:make_sim_backend",
                deterministic=True,
                description="in-process apartment and kinematic skills kernel",
            ),
            BackendSpec(
                name="skills",
                entry_point="twinloop.hardware.skills:make_skills_backend",
                deterministic=False,
                options=("address", "token", "timeout_s", "retries", "frame_px"),
                extra="microscope",
                address_format="tcp://{host}:{port}",
                description="a skills twin (`twinloop serve skills`) over the robot-skill protocol",
            ),
        ),
        description="Follow a language instruction to rearrange objects with high-level skills "
        "(LLaRP's Language Rearrangement, symbolic)",
    )
)
