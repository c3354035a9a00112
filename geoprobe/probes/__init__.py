"""Geometric and calibration probes: pure functions on tensors, one module per signature."""
