"""Tiny random-init models written by the reference libraries themselves (transformers, tokenizers),
for parity tests that must not download anything. Hidden size 32, 2 layers, 4 heads."""

from __future__ import annotations

from pathlib import Path

WORDS = ('the a an is are was of to in on and or not with for by at as it this that cat dog sat '
         'mat man playing guitar weather lovely today embeddings compress meaning into vectors jax '
         'composes pure functions under jit query passage search hello world').split()
TEXTS = ['A man is playing a guitar.', 'Embeddings compress meaning into vectors.',
         'The weather is lovely today!', 'JAX composes pure functions under jit.', 'cat',
         'The Cat sat on the MAT with a dog and it was lovely']
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def wordpiece_vocab(lowercase: bool) -> list[str]:
  specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  chars = sorted(set(''.join(WORDS)) | set('.!,?'))
  words = WORDS + ([] if lowercase else [w.capitalize() for w in WORDS] + ['MAT', 'JAX'])
  return list(dict.fromkeys(specials + chars + ['##' + c for c in chars] + words))  # no duplicates


def save_bert_with_tokenizer(folder: Path, *, lowercase: bool = True, seed: int = 0) -> Path:
  """A tiny BertModel (transformers) + WordPiece tokenizer (tokenizers) saved into ``folder``."""
  import tokenizers
  import torch
  import transformers

  folder.mkdir(parents=True, exist_ok=True)
  vocab = wordpiece_vocab(lowercase)
  (folder / 'vocab.txt').write_text('\n'.join(vocab) + '\n', encoding='utf-8')
  wp = tokenizers.BertWordPieceTokenizer(str(folder / 'vocab.txt'), lowercase=lowercase)
  fast = transformers.BertTokenizerFast(tokenizer_object=wp._tokenizer, do_lower_case=lowercase,
                                        model_max_length=64)
  fast.save_pretrained(str(folder))
  torch.manual_seed(seed)
  cfg = transformers.BertConfig(vocab_size=len(vocab), **TINY)
  transformers.AutoModel.from_config(cfg).save_pretrained(str(folder))
  return folder
