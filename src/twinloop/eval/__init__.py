"""twinloop.eval."""
