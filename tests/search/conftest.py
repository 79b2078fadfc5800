"""Runs the searches built on ``topk_blocked_by`` under each of its strategies.

The ``strategy`` fixture (applied with ``pytest.mark.usefixtures``) repeats a test with 'merge'
(the portable scan, the default off CPU) and with 'maxima' (the CPU specialisation) forced
through ``plan``, so that every reference comparison checks both paths (for 'maxima': its
selections and its re-score of gathered rows through each score function).
"""

from __future__ import annotations

import pytest

from embedjax.search import exact


@pytest.fixture(params=['merge', 'maxima'])
def strategy(request, monkeypatch):
  planned = exact.plan

  def forced(n, k, block_size=None, query_block=None, strategy=None):
    return planned(n, k, block_size, query_block, strategy or request.param)

  monkeypatch.setattr(exact, 'plan', forced)
  return request.param
