"""Predictions on the virtual clock: simulated trials, cost-model fits, calibration, estimates."""
