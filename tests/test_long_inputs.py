"""Chunk-and-pool on the packaged model: a text that fits one window is its ordinary embedding; a
long one is the normalised mean of its windows embedded one by one."""

from __future__ import annotations

import numpy as np

from embedjax.encoding import encode, encode_ids
from embedjax.long_inputs import chunk_and_pool, windows


def test_windows_wrap_each_chunk_in_the_special_tokens():
  assert windows([101, 1, 2, 3, 4, 5, 102], 4) == [[101, 1, 2, 102], [101, 3, 4, 102],
                                                   [101, 5, 102]]
  assert windows([101, 102], 4) == [[101, 102]]


def test_short_text_is_its_embedding_and_long_text_the_mean_of_its_windows(minilm):
  short = 'A man is playing a guitar.'
  long = ' '.join(f'sentence {i} talks about cells and proteins in tissue.' for i in range(60))
  got = chunk_and_pool(minilm, [short, long])
  np.testing.assert_allclose(got[0], encode(minilm, [short], progress=False)[0], atol=1e-5)
  ids = minilm.tokenizer.with_max_length(8192).encode([long])[0]
  assert len(ids) > 2 * minilm.spec.max_seq_length  # three windows at least
  parts = windows(ids, minilm.spec.max_seq_length)
  one_by_one = np.stack([encode_ids(minilm, [w])[0] for w in parts]).astype(np.float64).mean(0)
  np.testing.assert_allclose(got[1], one_by_one / np.linalg.norm(one_by_one), atol=1e-5)
  truncated = encode(minilm, [long], progress=False)[0]
  assert np.abs(got[1] - truncated).max() > 1e-3  # not the truncated text's embedding


def test_an_8k_token_input_encodes_with_minilm_in_under_4_gib(minilm):
  """all-MiniLM-L6-v2 with its position table stretched 16x and attention in query blocks of 512:
  one 8,192-token text through the whole model, peak memory measured in a fresh process."""
  import subprocess
  import sys
  script = f'''
import dataclasses
import jax, jax.numpy as jnp, numpy as np
from embedjax.models.pretrained import load_pretrained
from embedjax.models.positions import extend_positions
from embedjax.models.embedder import embed
m = load_pretrained({str(minilm.source)!r})
params, bert = extend_positions(m.params, m.spec.bert, 8192)
spec = dataclasses.replace(m.spec, bert=dataclasses.replace(bert, attention_block=512),
                           max_seq_length=8192)
ids = np.random.default_rng(0).integers(1000, 20000, (1, 8192)).astype(np.int32)
out = jax.jit(lambda p, i, a: embed(p, spec, i, a))(params, ids, np.ones_like(ids))
assert out.shape == (1, 384) and bool(jnp.isfinite(out).all())
from embedjax.process_memory import peak_rss_bytes
print(peak_rss_bytes() / 2 ** 30)  # this process's own peak, not its parent's (see process_memory)
'''
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  peak_gib = float(proc.stdout.strip().splitlines()[-1])
  assert peak_gib < 4.0, peak_gib
