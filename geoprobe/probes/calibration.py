"""Calibration against the exact posterior; the implementation lives in :mod:`geoprobe.calibration` (a low
module that training and evaluation use too). Re-exported here for the probe namespace."""

from geoprobe.calibration import (  # noqa: F401
    CalibrationAccumulator,
    CalibrationResult,
    calibration_from_log_probs,
    readout_log_probs,
)
