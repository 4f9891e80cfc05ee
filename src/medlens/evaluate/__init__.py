"""Evaluation on held-out data: metrics, and (later) intervals, calibration and policies."""
