"""A BERT-family model loads, encodes, trains and prunes without importing the decoder modules.

Why it matters: a recorded result lists the modules its run loaded, and a change to any of them
marks the result stale. Were the decoder imported by the BERT path, every decoder change
(long-context scaling, attention kernels) would stale every BERT study."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
import numpy as np
from embedjax.models.pretrained import init_model_params
from embedjax.models.spec import EmbedderSpec, is_decoder_config
from embedjax.models.bert import BertConfig
from embedjax.models.embedder import embed
import embedjax.train.loop, embedjax.pruning, embedjax.models.layerwise, embedjax.encoding
import jax
spec = EmbedderSpec(bert=BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32,
                                    max_position_embeddings=16), max_seq_length=16)
params = init_model_params(spec, jax.random.key(0))
ids = np.ones((2, 5), np.int32)
embed(params, spec, ids, np.ones_like(ids))
assert not is_decoder_config(spec.bert)
print(sorted(m for m in sys.modules if m.startswith('embedjax.models.') and
             ('decoder' in m or m.endswith(('.rope', '.self_extend')))))
"""

_SCRIPT_DECODER = """
from embedjax.models.decoder import DecoderConfig
from embedjax.models.spec import is_decoder_config
print(is_decoder_config(DecoderConfig()), is_decoder_config(object()))
"""


def _run(script: str) -> str:
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip().splitlines()[-1]


def test_the_bert_path_never_imports_the_decoder():
  assert _run(_SCRIPT) == '[]'


def test_is_decoder_config_recognises_a_decoder_config_once_loaded():
  assert _run(_SCRIPT_DECODER) == 'True False'
