"""The prior of a mobile manipulator's hidden imperfections, for the skills twin.

``twinloop serve skills --profile random:SEED`` draws these (see :mod:`twinloop.core.profile`)
around the twin's nominal values (its ``--failure-rate`` and ``--perception-error``, 0 by
default): how often each kind of skill fails although its preconditions hold, and how often
the robot misreports an object's category. Every prior is a ``shift`` (an added probability)
truncated to ``[0, high]``: with nominal 0 the draw is a half-normal. No benchmark publishes
these rates for a kinematic-skill robot; the spreads are stated guesses from mobile
manipulation practice: navigation rarely fails, grasps fail most, articulated objects in
between, and an open-vocabulary detector mislabels a few percent of objects.
"""

from __future__ import annotations

from twinloop.core.profile import Prior

#: The skills-robot prior, drawn in this order.
PRIORS: tuple[Prior, ...] = (
    Prior("nav_failure", "shift", 0.03, 0.0, 0.15, "path blocked, localisation lost (guess)"),
    Prior("pick_failure", "shift", 0.1, 0.0, 0.4, "grasps slip or miss (guess)"),
    Prior("place_failure", "shift", 0.05, 0.0, 0.2, "object falls or rolls off (guess)"),
    Prior("open_failure", "shift", 0.07, 0.0, 0.3, "handle missed (guess)"),
    Prior("close_failure", "shift", 0.05, 0.0, 0.2, "door bounces back (guess)"),
    Prior("perception_error", "shift", 0.03, 0.0, 0.15, "detector mislabels (guess)"),
)
