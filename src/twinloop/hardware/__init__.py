"""twinloop.hardware."""
