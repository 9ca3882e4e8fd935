"""The prior of a quadruped's hidden physics around the simulator's nominal robot.

``twinloop serve robot --profile random:SEED`` draws these (see :mod:`twinloop.core.profile`):
the robot's own fixed values (:class:`~.velocity_config.PlantConfig`) that a real Go1-class
robot has and its user does not know: the floor it walks on, its mass as built and loaded,
its motors' strength, its joints' friction and its actuation delay. ``log`` priors multiply the
nominal value by ``m``, ``ln m ~ N(0, sd^2)`` truncated to ``[low, high]``; ``shift`` priors
add ``d ~ N(0, sd^2)`` truncated to ``[low, high]``. The spreads follow the domain
randomisation ranges of the sim-to-real practice the system cites ([REF]:
``../shared/reference/locomotion.md``), narrowed where one robot is one draw, not a
population; where no range is published the spread is a stated guess.
"""

from __future__ import annotations

from twinloop.core.profile import Prior

#: The quadruped prior, drawn in this order.
PRIORS: tuple[Prior, ...] = (
    Prior(
        "plant.floor_friction",
        "log",
        0.3,
        0.4,
        1.2,
        "[REF] floors U(0.4, 1.0) around the model's 1.0 (rubber feet on lab floors)",
    ),
    Prior(
        "plant.mass_scale",
        "log",
        0.03,
        0.94,
        1.06,
        "[REF] link masses x U(0.9, 1.1); one built robot varies less (guess: +-6 %)",
    ),
    Prior(
        "plant.added_base_mass_kg",
        "shift",
        1.0,
        -1.0,
        3.0,
        "[REF] base mass + U(-1, 3) kg: battery, sensors, payload",
    ),
    Prior(
        "plant.motor_strength",
        "log",
        0.07,
        0.8,
        1.15,
        "[REF] motor strength x U(0.9, 1.1); motors lose torque with heat and age (guess)",
    ),
    Prior(
        "plant.joint_friction_scale",
        "log",
        0.3,
        0.5,
        2.0,
        "[REF] joint friction x U(0.9, 1.1) per env; gearboxes differ far more between robots "
        "(guess)",
    ),
    Prior(
        "plant.actuation_delay_ms",
        "shift",
        10.0,
        0.0,
        30.0,
        "[REF] latency ~30 ms (walk-these-ways: 6 x 5 ms); here beyond the drawn delay",
    ),
)
