"""Efficiency methods: one file each, registered by name (see `methods.registry`)."""
