"""Helpers for the uplink hub and worker tests: a script uplink and a hub served on loopback."""
