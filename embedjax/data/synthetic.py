"""Small synthetic tasks in English-like text, deterministic from a seed; and a BEIR writer.

These are the project's default data when the shared benchmark folder is absent. Sentences are
built from topic vocabularies (astronomy, cooking, ...) with a few templates, so a real sentence
encoder gives meaningful, clearly-above-chance numbers, while a bag-of-words baseline can also solve
them. Everything is drawn from ``np.random.default_rng(seed)``; the same arguments always give the
same data.

* :func:`synthetic_retrieval`: documents about one topic each; a query names three words of one
  document, and the relevant documents are exactly those that contain all three.
* :func:`synthetic_sts`: pairs with a gold score of 5 x Jaccard overlap of their topic words.
* :func:`synthetic_pairs`: paraphrase (1) vs. same-topic different-content (0) pairs.
* :func:`synthetic_classification`: topic classification, one class per topic.
* :func:`write_beir`: writes any :class:`RetrievalData` as a BEIR folder, atomically per file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from embedjax.io import atomic_write_text
from embedjax.data.readers import ClassificationData, PairData, RetrievalData

# Topic vocabularies: nouns only, all distinct across topics so topic words identify the topic.
TOPICS: dict[str, tuple[str, ...]] = {
    'astronomy': ('star', 'planet', 'telescope', 'orbit', 'galaxy', 'comet', 'nebula', 'moon', 'asteroid',
                  'eclipse', 'meteor', 'satellite', 'observatory', 'supernova', 'constellation', 'quasar',
                  'astronaut', 'rocket', 'crater', 'horizon', 'spectrum', 'pulsar', 'cosmos', 'sunspot'),
    'cooking': ('oven', 'recipe', 'flour', 'butter', 'garlic', 'onion', 'skillet', 'sauce', 'pastry', 'dough',
                'spice', 'pepper', 'kitchen', 'chef', 'broth', 'noodle', 'vinegar', 'honey', 'cinnamon',
                'lemon', 'tomato', 'basil', 'ladle', 'casserole'),
    'sailing': ('boat', 'sail', 'harbor', 'anchor', 'mast', 'deck', 'captain', 'wave', 'tide', 'compass',
                'rudder', 'island', 'lighthouse', 'current', 'voyage', 'crew', 'hull', 'rope', 'dock',
                'ferry', 'gull', 'reef', 'lagoon', 'breeze'),
    'music': ('guitar', 'piano', 'melody', 'rhythm', 'concert', 'violin', 'drum', 'choir', 'song', 'chord',
              'orchestra', 'trumpet', 'album', 'singer', 'lyric', 'harmony', 'tempo', 'flute', 'stage',
              'ballad', 'conductor', 'saxophone', 'cello', 'symphony'),
    'medicine': ('doctor', 'patient', 'hospital', 'vaccine', 'fever', 'surgery', 'nurse', 'clinic', 'virus',
                 'antibiotic', 'diagnosis', 'therapy', 'bandage', 'pharmacy', 'symptom', 'infection',
                 'prescription', 'injury', 'ambulance', 'pulse', 'allergy', 'tablet', 'stethoscope', 'fracture'),
    'gardening': ('garden', 'seed', 'soil', 'tulip', 'shovel', 'compost', 'greenhouse', 'rose', 'weed',
                  'fertilizer', 'sprout', 'hedge', 'orchard', 'pumpkin', 'lettuce', 'mulch', 'trowel',
                  'blossom', 'vine', 'bulb', 'sunflower', 'meadow', 'rake', 'daisy'),
    'finance': ('bank', 'loan', 'market', 'stock', 'investor', 'budget', 'interest', 'dividend', 'currency',
                'inflation', 'mortgage', 'profit', 'tax', 'bond', 'portfolio', 'deposit', 'credit', 'auditor',
                'merger', 'revenue', 'pension', 'salary', 'invoice', 'shareholder'),
    'football': ('goal', 'striker', 'referee', 'stadium', 'league', 'coach', 'penalty', 'midfielder',
                 'keeper', 'tournament', 'fan', 'whistle', 'jersey', 'header', 'tackle', 'derby', 'trophy',
                 'pitch', 'corner', 'captaincy', 'transfer', 'season', 'kickoff', 'defender'),
    'computing': ('computer', 'keyboard', 'software', 'server', 'network', 'algorithm', 'database',
                  'processor', 'compiler', 'browser', 'password', 'laptop', 'program', 'memory', 'cable',
                  'monitor', 'router', 'kernel', 'cursor', 'firewall', 'bug', 'script', 'pixel', 'backup'),
    'geology': ('rock', 'volcano', 'mineral', 'fossil', 'glacier', 'canyon', 'quartz', 'earthquake', 'lava',
                'sediment', 'granite', 'cave', 'erosion', 'magma', 'basalt', 'crystal', 'cliff', 'boulder',
                'limestone', 'geyser', 'valley', 'marble', 'plateau', 'dune'),
    'travel': ('airport', 'passport', 'luggage', 'hotel', 'ticket', 'train', 'tourist', 'map', 'suitcase',
               'museum', 'guide', 'visa', 'flight', 'hostel', 'souvenir', 'itinerary', 'taxi', 'station',
               'border', 'postcard', 'backpack', 'cruise', 'resort', 'embassy'),
    'wildlife': ('wolf', 'eagle', 'deer', 'fox', 'bear', 'owl', 'rabbit', 'squirrel', 'beaver', 'otter',
                 'hawk', 'moose', 'badger', 'lynx', 'heron', 'salmon', 'bison', 'hedgehog', 'raccoon',
                 'falcon', 'tortoise', 'lizard', 'frog', 'sparrow'),
}

_ADJECTIVES = ('old', 'new', 'small', 'large', 'quiet', 'bright', 'dark', 'famous', 'strange', 'busy',
               'heavy', 'gentle', 'ancient', 'modern', 'distant', 'local', 'broken', 'shiny', 'tired', 'rare')
_VERBS = ('watches', 'follows', 'changes', 'reaches', 'touches', 'finds', 'moves', 'covers', 'joins',
          'shows', 'holds', 'passes', 'meets', 'leaves', 'carries', 'reveals', 'supports', 'surrounds')
_DOC_TEMPLATES = (
    'The {a} {n0} {v} the {n1} near the {n2}.',
    'A {a} {n0} and a {n1} were seen beside the {n2}.',
    'Every {n0} {v} a {a} {n1} before the {n2}.',
    'People say the {n0} {v} the {n1} while the {n2} stays {a}.',
)
_QUERY_TEMPLATES = (
    'Which text mentions the {n0}, the {n1} and the {n2}?',
    'Find the passage about a {n0} with a {n1} and a {n2}.',
    '{n0} {n1} {n2}',
    'Where is the {n0} together with the {n1} and the {n2} described?',
)
_TITLE_TEMPLATES = ('Notes on the {n0}', 'A story of the {n0} and the {n1}', 'The {a} {n0}')


def _topic_names(n_classes: int | None = None) -> list[str]:
  names = list(TOPICS)
  if n_classes is None:
    return names
  if not 1 <= n_classes <= len(names):
    raise ValueError(f'n_classes must be in 1..{len(names)}, got {n_classes}')
  return names[:n_classes]


def _pick(rng: np.random.Generator, items, size: int | None = None, replace: bool = True):
  if size is None:
    return items[int(rng.integers(len(items)))]
  return [items[int(i)] for i in rng.choice(len(items), size=size, replace=replace)]


_A_BEFORE_VOWEL = re.compile(r'\b([Aa]) (?=[aeiou])')


def _finish(text: str) -> str:
  """'a' -> 'an' before a vowel, and a capital first letter."""
  text = _A_BEFORE_VOWEL.sub(r'\1n ', text)
  return text[0].upper() + text[1:]


def _sentence(rng: np.random.Generator, nouns: list[str], templates=_DOC_TEMPLATES) -> str:
  """One sentence over three nouns."""
  return _finish(_pick(rng, templates).format(a=_pick(rng, _ADJECTIVES), v=_pick(rng, _VERBS),
                                              n0=nouns[0], n1=nouns[1], n2=nouns[2]))


def _words(text: str) -> set[str]:
  return {w.strip('.,?!').lower() for w in text.split()}


def synthetic_retrieval(seed: int = 0, n_docs: int = 300, n_queries: int = 50) -> RetrievalData:
  """Topic documents and three-keyword queries.

  Each document (``d0``, ``d1``, ...) picks a topic and writes three sentences over nine topic nouns.
  Each query (``q0``, ...) takes three nouns of a distinct target document; its relevant documents
  (relevance 1) are all those containing the three nouns, the target included, so the qrels are
  exact by construction. With the defaults a query has about 1-2 relevant documents out of 300.

  Returns:
    RetrievalData with D = n_docs documents and Q = n_queries queries.
  """
  if n_queries > n_docs:
    raise ValueError(f'n_queries ({n_queries}) must not exceed n_docs ({n_docs})')
  rng = np.random.default_rng(seed)
  topics = _topic_names()
  doc_ids: list[str] = []
  doc_texts: list[str] = []
  doc_nouns: list[list[str]] = []
  for i in range(n_docs):
    vocab = TOPICS[_pick(rng, topics)]
    nouns = _pick(rng, vocab, size=9, replace=False)
    title = _finish(_pick(rng, _TITLE_TEMPLATES).format(a=_pick(rng, _ADJECTIVES), n0=nouns[0], n1=nouns[1]))
    body = ' '.join(_sentence(rng, nouns[j:j + 3]) for j in (0, 3, 6))
    doc_ids.append(f'd{i}')
    doc_texts.append(f'{title}. {body}')
    doc_nouns.append(nouns)
  doc_words = [_words(t) for t in doc_texts]

  query_ids: list[str] = []
  query_texts: list[str] = []
  qrels: dict[str, dict[str, int]] = {}
  for qi, target in enumerate(rng.choice(n_docs, size=n_queries, replace=False)):
    keys = _pick(rng, doc_nouns[int(target)], size=3, replace=False)
    text = _pick(rng, _QUERY_TEMPLATES).format(n0=keys[0], n1=keys[1], n2=keys[2])
    query_id = f'q{qi}'
    query_ids.append(query_id)
    query_texts.append(_finish(text))
    qrels[query_id] = {doc_ids[d]: 1 for d in range(n_docs) if all(k in doc_words[d] for k in keys)}
  return RetrievalData(doc_ids, doc_texts, query_ids, query_texts, qrels)


def synthetic_sts(seed: int = 0, n: int = 200) -> PairData:
  """Sentence pairs whose gold score is 5 x Jaccard overlap of their topic nouns.

  sentence2 keeps k of sentence1's three nouns (k uniform in 0..3, in a new template and order)
  and replaces the rest by nouns of the same topic, or, for a quarter of the pairs, of another
  topic. Scores are float64 in [0, 5] (values 0, 1, 2.5 and 5).
  """
  rng = np.random.default_rng(seed)
  topics = _topic_names()
  s1: list[str] = []
  s2: list[str] = []
  scores: list[float] = []
  for _ in range(n):
    topic = _pick(rng, topics)
    nouns = _pick(rng, TOPICS[topic], size=3, replace=False)
    keep = int(rng.integers(0, 4))
    other = _pick(rng, [t for t in topics if t != topic]) if rng.random() < 0.25 else topic
    fresh = [w for w in _pick(rng, TOPICS[other], size=6, replace=False) if w not in nouns][:3 - keep]
    nouns2 = [nouns[int(i)] for i in rng.permutation(3)[:keep]] + fresh
    nouns2 = [nouns2[int(i)] for i in rng.permutation(3)]
    s1.append(_sentence(rng, nouns))
    s2.append(_sentence(rng, nouns2))
    a, b = set(nouns), set(nouns2)
    scores.append(5.0 * len(a & b) / len(a | b))
  return PairData(s1, s2, np.asarray(scores, dtype=np.float64))


def synthetic_pairs(seed: int = 0, n: int = 200) -> PairData:
  """Paraphrase-like pairs with 0/1 labels (about half positive).

  A positive pair uses the same three nouns in a different template and order; a negative pair
  is from the same topic with three different nouns, so only content, not topic, separates them.
  """
  rng = np.random.default_rng(seed)
  topics = _topic_names()
  s1: list[str] = []
  s2: list[str] = []
  scores: list[float] = []
  for _ in range(n):
    vocab = TOPICS[_pick(rng, topics)]
    nouns = _pick(rng, vocab, size=6, replace=False)
    positive = bool(rng.random() < 0.5)
    first = _sentence(rng, nouns[:3])
    if positive:
      nouns2 = [nouns[int(i)] for i in rng.permutation(3)]
      second = first
      while second == first:
        second = _sentence(rng, nouns2)
    else:
      second = _sentence(rng, nouns[3:])
    s1.append(first)
    s2.append(second)
    scores.append(float(positive))
  return PairData(s1, s2, np.asarray(scores, dtype=np.float64))


def synthetic_classification(seed: int = 0, n_per_class: int = 50,
                             n_classes: int = 4) -> tuple[ClassificationData, ClassificationData]:
  """Topic classification: one class per topic (the first ``n_classes`` of :data:`TOPICS`).

  Each text is two sentences over topic nouns. Train and test each hold ``n_per_class`` texts per
  class, drawn independently, labels in class order then shuffled.

  Returns:
    (train, test), each with N = n_per_class * n_classes texts and int64 (N,) labels.
  """
  rng = np.random.default_rng(seed)
  names = _topic_names(n_classes)

  def make() -> ClassificationData:
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    labels = labels[rng.permutation(len(labels))]
    texts = []
    for label in labels:
      nouns = _pick(rng, TOPICS[names[int(label)]], size=6, replace=False)
      texts.append(f'{_sentence(rng, nouns[:3])} {_sentence(rng, nouns[3:])}')
    return ClassificationData(texts, labels, list(names))

  return make(), make()


def write_beir(data: RetrievalData, folder: str | os.PathLike, split: str = 'test') -> Path:
  """Writes ``data`` as a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

  Documents get an empty title (the reader joins title and text), so ``read_beir(folder, split)``
  returns ``data`` again for any data whose texts have no leading/trailing whitespace. Ids and texts
  may not contain tabs or newlines where the TSV needs them. Each file is replaced atomically.

  Returns:
    The folder as a Path.
  """
  folder = Path(folder)
  (folder / 'qrels').mkdir(parents=True, exist_ok=True)
  for qid, judged in data.qrels.items():
    for did in judged:
      if any(c in s for s in (qid, did) for c in '\t\n\r'):
        raise ValueError(f'qrels ids may not contain tabs or newlines: {qid!r} {did!r}')
  corpus = ''.join(json.dumps({'_id': i, 'title': '', 'text': t}, ensure_ascii=False) + '\n'
                   for i, t in zip(data.corpus_ids, data.corpus_texts))
  queries = ''.join(json.dumps({'_id': i, 'text': t}, ensure_ascii=False) + '\n'
                    for i, t in zip(data.query_ids, data.query_texts))
  qrels = 'query-id\tcorpus-id\tscore\n' + ''.join(
      f'{qid}\t{did}\t{score}\n' for qid, judged in data.qrels.items() for did, score in judged.items())
  atomic_write_text(folder / 'corpus.jsonl', corpus)
  atomic_write_text(folder / 'queries.jsonl', queries)
  atomic_write_text(folder / 'qrels' / f'{split}.tsv', qrels)
  return folder
