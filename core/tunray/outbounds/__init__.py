"""Outbounds built into the core (registered by :mod:`tunray.builtin`)."""
