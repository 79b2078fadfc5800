r"""The LLM-embedder summary (parity with transformers, sharded losses, gradient-cache numbers).

python -m experiments.llm_embedders --config configs/llm_embedders.py
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0                     # init, perturbation and token ids
  c.archs = ('llama', 'mistral', 'qwen2', 'qwen3')  # parity with transformers, tiny models
  c.size = dict(  # the tiny models' shape (GQA 4 / 2)
      vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
  c.lengths = (11, 7, 3)         # tokens of the rows compared (padded to the longest)
  c.steps = 3                    # SGD steps per mesh in the sharding check
  c.out = 'results/llm_embedders.json'  # relative to the repository
  return c
