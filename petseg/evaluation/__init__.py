"""Scoring predictions: the autoPET and lesion-level metrics, rankings and tests, calibration, figures and
the HTML report. Not part of the inference image."""
