"""The streaming folder scan: discovery of adapter files, torch-free light reads in reader processes
(`lightread`, `npconvert`, `labels`), the shared-memory hand-off (`handoff`, `slots`), packing into
factor batches (`packing`), assembly overlapped with scoring (`stages`) and the scorer (`scoring`).

Deliberately empty: importing a module of this package must not import torch or the scorer, so that
reader processes which preload `lolscan.scan.lightread` start in a fraction of a second.
"""
