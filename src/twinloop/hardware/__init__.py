"""Device backends: network twins and vendor adapters behind ``twinloop.core.Backend``."""
