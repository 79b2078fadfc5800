"""Runs the searches built on ``topk_blocked_by`` under both of its strategies.

``plan`` picks 'maxima' only for corpora beyond one 16,384-row merge block, larger than these
tests use; the ``strategy`` fixture (applied with ``pytest.mark.usefixtures``) repeats a test
with 'maxima' forced, so that every reference comparison also checks that path (its selections
and its re-score of gathered rows through each score function).
"""

from __future__ import annotations

import pytest

from embedjax.search import exact


@pytest.fixture(params=['planned', 'maxima'])
def strategy(request, monkeypatch):
  if request.param == 'maxima':
    planned = exact.plan

    def forced(n, k, block_size=None, query_block=None, strategy=None):
      return planned(n, k, block_size, query_block, strategy or 'maxima')

    monkeypatch.setattr(exact, 'plan', forced)
  return request.param
