"""Regression probes for continuous targets (TUSA-style: ejection fraction, steatosis, lesion size).

A thin front over the linear grid with a squared-error loss on standardised targets; the head is
chosen on validation R^2 and reported on test as Pearson r, MAE and R^2.
"""

from __future__ import annotations

from usjepa.eval.linear import linear_probe


def regression_probe(train, val, test=None, **options) -> dict:
    """`linear_probe(..., task="regression")`: returns pearson_r, mae, r2 on test and the selected head."""
    options.setdefault("select_metric", "r2")
    return linear_probe(train, val, test, task="regression", **options)
