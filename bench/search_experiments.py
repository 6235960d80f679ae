"""Experiments on `lolscan.training.search` that the bench scripts share (`--search-margin`, `--search-log`).
Set before any run starts (bench/invariants.py's workers fork after it)."""
from __future__ import annotations

# The candidate `--search-log` appends to GL-net's search: the spectral head on log(σ/ref) (`GLNet`
# ``log_spectra``), after the other candidates, kept on the usual margin and confidence.
LOG_CANDIDATE = {"products": False, "summaries": False, "log_spectra": True}


def apply(margin: float | None = None, log: bool = False) -> None:
    """`SEARCH_MARGIN` set to ``margin`` (when given); with ``log``, `LOG_CANDIDATE` last in GL-net's search."""
    import lolscan.training.search as search

    if margin is not None:
        search.SEARCH_MARGIN = margin
    if log and LOG_CANDIDATE not in search.SEARCH["glnet"]:
        search.SEARCH["glnet"] = [*search.SEARCH["glnet"], dict(LOG_CANDIDATE)]
