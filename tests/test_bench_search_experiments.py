"""bench/search_experiments.py: the bench scripts' `--search-log` adds the log-spectra candidate last to the
search `lolscan train` runs, once, and the usual rules about user-set settings still apply to it."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from lolscan.training import TrainOptions, search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import search_experiments  # noqa: E402


@pytest.fixture
def restored(monkeypatch):
    monkeypatch.setattr(search, "SEARCH", copy.deepcopy(search.SEARCH))
    monkeypatch.setattr(search, "SEARCH_MARGIN", search.SEARCH_MARGIN)


def test_search_log_tries_the_log_spectra_head_last_and_once(restored):
    before = search.candidates(TrainOptions(arch="glnet"))
    search_experiments.apply(log=True)
    search_experiments.apply(log=True)
    after = search.candidates(TrainOptions(arch="glnet"))
    assert after[:-1] == before and after[-1] == search_experiments.LOG_CANDIDATE
    # a user who fixed products=True rules the candidate out (it reads the spectra alone)
    assert search_experiments.LOG_CANDIDATE not in search.candidates(TrainOptions(arch="glnet", hparams={"products": True}))


def test_search_margin_is_set_and_left_alone_when_not_given(restored):
    search_experiments.apply(margin=0.25)
    assert search.SEARCH_MARGIN == 0.25
    search_experiments.apply()
    assert search.SEARCH_MARGIN == 0.25 and search_experiments.LOG_CANDIDATE not in search.SEARCH["glnet"]
