"""The stratospheric balloon: superpressure balloon physics, winds and station keeping."""
