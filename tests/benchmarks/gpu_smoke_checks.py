"""What the BERT-shape GPU benchmarks' smoke runs must record for embedjax (shared by their tests)."""

from __future__ import annotations


def check_embedjax_runs(runs: dict, traced: str) -> None:
  """``runs``: one model's {system: result}; ``traced``: the profile's count field ('steps' or
  'calls'). On a CPU both embedjax systems take the einsum path, and the profile sums host ops."""
  assert runs['embedjax']['attention_impl'] == 'auto'
  assert runs['embedjax_xla']['attention_impl'] == 'xla'
  for system in ('embedjax', 'embedjax_xla'):
    assert runs[system]['attention_path'] == 'xla'
    assert runs[system]['hlo_calls_cudnn_fmha'] is False
  prof = runs['embedjax']['profile']
  assert prof['rows'] == 'host' and prof['total_ms'] > 0 and prof[traced] >= 1
  assert prof['top'] and 0 < sum(t['share'] for t in prof['top']) <= 1 + 1e-9
  assert all(t['ms'] > 0 for t in prof['top'])
