"""twinloop.sim.stem."""
