"""The balloon flight controller over MAVLink: protocol, backend, vehicle twin, fakes."""
