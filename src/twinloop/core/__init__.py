"""twinloop.core."""
