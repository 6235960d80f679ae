"""How good a checkpoint is: training and evaluation metrics (`metrics`), calibrated intervals,
temperatures and the in-domain score (`calibration`), the gauge-invariance self-test (`selftest`) and
`lolscan eval`'s run on a labelled manifest (`run`).

Deliberately empty: `calibration` is imported lazily by `lolscan.checkpoint`, so this package must
not pull in anything above the nets layer.
"""
