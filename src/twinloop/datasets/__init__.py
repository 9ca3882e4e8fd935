"""twinloop.datasets."""
