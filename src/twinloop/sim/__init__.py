"""twinloop.sim."""
