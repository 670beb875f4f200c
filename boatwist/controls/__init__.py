"""
The device: controls declared in the INI, their backends, and the one
pipeline every operation goes through (DESIGN.md, "Device controls,
operations and the floor").
"""
