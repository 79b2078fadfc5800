"""LIMIT-style qrel patterns and synthetic corpora (Weller et al. 2025, "On the Theoretical
Limitations of Embedding-Based Retrieval").

Every query has exactly k = 2 relevant documents, taken from a *pool* of m relevant documents. A
pattern says which pair of pool documents each query asks for:

* ``dense``: all C(m, 2) pairs of the pool in lexicographic order, the first Q of them; the default
  pool is the smallest m with C(m, 2) >= Q (46 for Q = 1000, as in LIMIT).
* ``random``: Q distinct pairs drawn uniformly without replacement from the C(m, 2) pairs of a pool
  of m = 2Q documents (as many as ``disjoint`` uses), so that a document is relevant to about one
  query, as when relevant documents are drawn at random from a corpus. (Drawn from a 46-document
  pool, 1,000 random pairs would be 97 % of all its pairs: ``dense`` again.)
* ``cycle``: query i asks for (i, (i + 1) mod m); default pool m = Q.
* ``disjoint``: query i asks for (2i, 2i + 1); default pool m = 2Q.

:func:`generate_corpus` turns a pattern into a corpus in the format of the released LIMIT data:
documents ``"<Name> likes A, B, ... and Z."`` (the name is the document id) and queries
``"Who likes X?"``. Query i gets its own attribute X that exactly its two relevant documents like,
and nobody else; all other liked items are *fillers* that no query asks about. As in LIMIT, X holds
a word found nowhere else in the corpus, so the task stays trivially lexical (see the word lists). Every document lists
the same number of items, so length does not give relevance away. Everything is drawn from
``np.random.default_rng(seed)``: the same arguments always give the same corpus.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from embedjax.data.readers import RetrievalData

PATTERNS = ('dense', 'random', 'cycle', 'disjoint')
MIN_LIKES_PER_DOC = 10

# ----------------------------------------------------------------------------------------------
# Word lists.
#
# Fillers are "<Adjective> <Plural noun>" ("Vintage Bicycles"). Query attributes are "<Variety>
# <Plural noun>" ("Bravella Daisies", in the style of LIMIT's "Shasta Daisies" / "Joshua Trees"),
# where the variety word is made up and belongs to that query alone. Why: LIMIT's query items are
# nearly unique at the word level (1705 distinct words over its 1448 query items), so the task is
# trivially lexical. Were query attributes adjective + noun combinations too, each adjective would
# occur in about a third of the documents (45 items each, 129 adjectives) and a bag-of-words
# retriever such as BM25 could not tell the two relevant documents from the rest (recall@2 < 1%
# measured at 50,000 x 1,000); the corpus would test word composition, not the embedding dimension.
#
# Every word is capitalised with lowercase after its first letter, the nouns are prefix-free and the
# word lists are pairwise disjoint (tests/limit/test_patterns.py checks this), so an attribute never
# occurs inside another item or a name: searching a text for an attribute finds exactly the
# documents that like it.

_ADJECTIVES = (
    'Vintage', 'Antique', 'Modern', 'Rustic', 'Tiny', 'Giant', 'Wooden', 'Metal', 'Glass', 'Ceramic',
    'Silk', 'Woolen', 'Leather', 'Paper', 'Velvet', 'Crystal', 'Copper', 'Bronze', 'Golden', 'Silver',
    'Marble', 'Stone', 'Bamboo', 'Porcelain', 'Plastic', 'Frozen', 'Roasted', 'Spicy', 'Sweet', 'Sour',
    'Salty', 'Smoked', 'Pickled', 'Fried', 'Baked', 'Steamed', 'Grilled', 'Candied', 'Organic', 'Exotic',
    'Tropical', 'Arctic', 'Desert', 'Alpine', 'Coastal', 'Urban', 'Rural', 'Medieval', 'Victorian',
    'Baroque', 'Gothic', 'Futuristic', 'Retro', 'Classic', 'Miniature', 'Handmade', 'Homemade',
    'Painted', 'Striped', 'Spotted', 'Checkered', 'Floral', 'Colorful', 'Crimson', 'Scarlet', 'Azure',
    'Turquoise', 'Emerald', 'Amber', 'Ivory', 'Ebony', 'Violet', 'Indigo', 'Lavender', 'Orange', 'Pink',
    'Purple', 'Yellow', 'Green', 'Blue', 'Red', 'Black', 'White', 'Gray', 'Brown', 'Shiny', 'Glossy',
    'Dusty', 'Muddy', 'Fuzzy', 'Fluffy', 'Prickly', 'Squeaky', 'Noisy', 'Silent', 'Sleepy', 'Grumpy',
    'Cheerful', 'Playful', 'Clever', 'Curious', 'Brave', 'Gentle', 'Wild', 'Tame', 'Ancient', 'Sturdy',
    'Fragile', 'Heavy', 'Feathered', 'Electric', 'Solar', 'Magnetic', 'Mechanical', 'Inflatable',
    'Folding', 'Portable', 'Floating', 'Flying', 'Spinning', 'Glowing', 'Sparkling', 'Rusty', 'Polished',
    'Carved', 'Woven', 'Knitted', 'Embroidered', 'Lacquered',
)

_NOUNS = (
    'Bicycles', 'Lanterns', 'Teapots', 'Umbrellas', 'Violins', 'Trumpets', 'Drums', 'Kites', 'Clocks',
    'Candles', 'Mirrors', 'Baskets', 'Blankets', 'Pillows', 'Buttons', 'Kettles', 'Spoons', 'Forks',
    'Ladders', 'Hammers', 'Wrenches', 'Compasses', 'Telescopes', 'Microscopes', 'Globes', 'Maps',
    'Postcards', 'Stamps', 'Coins', 'Medals', 'Trophies', 'Helmets', 'Boots', 'Sandals', 'Scarves',
    'Gloves', 'Mittens', 'Hats', 'Jackets', 'Sweaters', 'Vests', 'Rings', 'Necklaces', 'Bracelets',
    'Earrings', 'Brooches', 'Puzzles', 'Dominoes', 'Dice', 'Cards', 'Chessboards', 'Robots', 'Rockets',
    'Submarines', 'Tractors', 'Trains', 'Trucks', 'Sailboats', 'Canoes', 'Kayaks', 'Gondolas',
    'Carriages', 'Wagons', 'Scooters', 'Skateboards', 'Surfboards', 'Sleds', 'Tents', 'Hammocks',
    'Cabins', 'Castles', 'Towers', 'Bridges', 'Fountains', 'Gardens', 'Greenhouses', 'Windmills',
    'Lighthouses', 'Barns', 'Cottages', 'Igloos', 'Pagodas', 'Statues', 'Sculptures', 'Paintings',
    'Murals', 'Tapestries', 'Quilts', 'Rugs', 'Curtains', 'Vases', 'Bowls', 'Mugs', 'Jars', 'Bottles',
    'Goblets', 'Platters', 'Saucers', 'Ladles', 'Whisks', 'Skillets', 'Ovens', 'Toasters', 'Radios',
    'Televisions', 'Cameras', 'Typewriters', 'Phonographs', 'Pianos', 'Harps', 'Flutes', 'Cellos',
    'Banjos', 'Ukuleles', 'Accordions', 'Tambourines', 'Xylophones', 'Harmonicas', 'Bagpipes', 'Owls',
    'Foxes', 'Otters', 'Badgers', 'Hedgehogs', 'Rabbits', 'Squirrels', 'Beavers', 'Raccoons', 'Ferrets',
    'Parrots', 'Penguins', 'Flamingos', 'Pelicans', 'Peacocks', 'Swans', 'Geese', 'Ducks', 'Turtles',
    'Tortoises', 'Lizards', 'Frogs', 'Salamanders', 'Dolphins', 'Whales', 'Seals', 'Walruses',
    'Octopuses', 'Jellyfish', 'Starfish', 'Crabs', 'Lobsters', 'Snails', 'Butterflies', 'Beetles',
    'Dragonflies', 'Ladybugs', 'Tulips', 'Daisies', 'Orchids', 'Roses', 'Lilies', 'Sunflowers', 'Cacti',
    'Ferns', 'Mushrooms', 'Pumpkins', 'Carrots', 'Tomatoes', 'Peppers', 'Onions', 'Potatoes', 'Mangoes',
    'Lemons', 'Cherries', 'Apples', 'Pears', 'Plums', 'Peaches', 'Grapes', 'Melons', 'Coconuts',
    'Pancakes', 'Waffles', 'Muffins', 'Cookies', 'Pretzels', 'Dumplings', 'Noodles', 'Pies', 'Tacos',
    'Sandwiches', 'Soups', 'Cheeses', 'Puddings', 'Cupcakes', 'Doughnuts', 'Candies', 'Pebbles',
    'Seashells', 'Fossils', 'Meteorites', 'Volcanoes', 'Glaciers', 'Waterfalls', 'Canyons', 'Islands',
)

# Names are "<First> <Last>"; last names are built from two syllables ("Ash" + "ford") so that
# 115 first names x 1000 last names give over 100,000 distinct people.
_FIRST_NAMES = (
    'Abigail', 'Adrian', 'Agnes', 'Albert', 'Alice', 'Amelia', 'Andrew', 'Angela', 'Arthur', 'Audrey',
    'Barbara', 'Beatrice', 'Benjamin', 'Bernard', 'Bianca', 'Caleb', 'Camille', 'Carlos', 'Caroline',
    'Cecilia', 'Charles', 'Clara', 'Colin', 'Cora', 'Daniel', 'Daphne', 'David', 'Delia', 'Dennis',
    'Dorothy', 'Edgar', 'Edith', 'Edward', 'Eleanor', 'Elias', 'Eliza', 'Emil', 'Emma', 'Ernest',
    'Esther', 'Felix', 'Fiona', 'Florence', 'Francis', 'Gabriel', 'Geneva', 'George', 'Gloria', 'Gordon',
    'Grace', 'Harold', 'Harriet', 'Henry', 'Helen', 'Hugo', 'Ida', 'Irene', 'Isaac', 'Isabel', 'Jacob',
    'Jane', 'Jerome', 'Joan', 'Joel', 'Josephine', 'Julian', 'Julia', 'Karen', 'Keith', 'Laura', 'Leon',
    'Lillian', 'Louis', 'Lucy', 'Mabel', 'Marcus', 'Margaret', 'Martin', 'Matilda', 'Miriam', 'Nathan',
    'Nina', 'Norman', 'Olga', 'Oscar', 'Pamela', 'Patrick', 'Philip', 'Priscilla', 'Quentin', 'Rachel',
    'Raymond', 'Rebecca', 'Roland', 'Rosalind', 'Samuel', 'Sarah', 'Simon', 'Sophia', 'Stella', 'Stuart',
    'Sylvia', 'Theodore', 'Thomas', 'Ursula', 'Vera', 'Victor', 'Vincent', 'Walter', 'Wendy', 'Wilfred',
    'Xavier', 'Yvonne', 'Zachary', 'Zelda',
)
_SURNAME_HEADS = (
    'Ash', 'Bal', 'Bar', 'Bel', 'Bram', 'Brook', 'Cal', 'Carr', 'Dal', 'Dun', 'Dur', 'Ed', 'Fair', 'Fen',
    'Gar', 'Hal', 'Har', 'Hol', 'Kel', 'Lang', 'Mar', 'Mer', 'Nor', 'Oak', 'Pem', 'Ral', 'Red', 'Ros',
    'Sal', 'Shel', 'Stan', 'Thorn', 'Wal', 'Wes', 'Win', 'Wood', 'Yar', 'Brad', 'Crom', 'Gil',
)
_SURNAME_TAILS = (
    'ford', 'well', 'ton', 'ley', 'by', 'more', 'wick', 'field', 'worth', 'stead', 'bury', 'ham', 'don',
    'den', 'ridge', 'land', 'wood', 'croft', 'mere', 'shaw', 'gate', 'hurst', 'ben', 'tress', 'ner',
)
# 40 x 25 heads/tails, deduplicated in case two splits spell the same surname.
_SURNAMES = tuple(dict.fromkeys(h + t for h in _SURNAME_HEADS for t in _SURNAME_TAILS))

# Variety words: onset + vowel + middle + ending ("Br" "a" "v" "ella"), minus any that spell a word
# of the other lists.
_VARIETY_ONSETS = ('B', 'Br', 'C', 'Cr', 'D', 'Dr', 'F', 'Fl', 'G', 'Gr', 'H', 'J', 'K', 'L', 'M', 'N', 'P',
                   'Pl', 'Qu', 'R', 'S', 'Sk', 'St', 'T', 'Tr', 'V', 'Z')
_VARIETY_VOWELS = ('a', 'e', 'i', 'o', 'u', 'ai')
_VARIETY_MIDDLES = ('b', 'd', 'l', 'lm', 'm', 'n', 'nd', 'r', 'rb', 'rv', 's', 'sk', 't', 'v', 'z', 'll', 'rn',
                    'st', 'g', 'ck')
_VARIETY_ENDINGS = ('ara', 'ella', 'ine', 'ino', 'ora', 'ova', 'ani', 'eth', 'ondo', 'ira', 'uma', 'essa',
                    'ian', 'ock', 'ow', 'adel', 'imba', 'oret', 'usa', 'enti')
_TAKEN = {w.lower() for w in _ADJECTIVES + _NOUNS + _FIRST_NAMES + _SURNAMES}
_VARIETIES = tuple(w for w in dict.fromkeys(o + v + m + e for o in _VARIETY_ONSETS for v in _VARIETY_VOWELS
                                            for m in _VARIETY_MIDDLES for e in _VARIETY_ENDINGS)
                   if w.lower() not in _TAKEN)

MAX_DOCS = len(_FIRST_NAMES) * len(_SURNAMES)
MAX_QUERIES = len(_VARIETIES)
NUM_FILLERS = len(_ADJECTIVES) * len(_NOUNS)


def person_name(index: int) -> str:
  """The ``index``-th of the ``MAX_DOCS`` distinct names (first name major order)."""
  first, last = divmod(int(index), len(_SURNAMES))
  return f'{_FIRST_NAMES[first]} {_SURNAMES[last]}'


def filler(index: int) -> str:
  """The ``index``-th of the ``NUM_FILLERS`` distinct filler items (adjective major order)."""
  adjective, noun = divmod(int(index), len(_NOUNS))
  return f'{_ADJECTIVES[adjective]} {_NOUNS[noun]}'


# ----------------------------------------------------------------------------------------------
# Qrel patterns


def as_generator(key_or_seed) -> np.random.Generator:
  """A numpy Generator from an int seed, a Generator (used as is) or a JAX PRNG key.

  A JAX key (typed or raw uint32) seeds ``np.random.default_rng`` with its key data, so
  ``jax.random.fold_in(key, i)`` gives independent, reproducible numpy streams.
  """
  if isinstance(key_or_seed, np.random.Generator):
    return key_or_seed
  if isinstance(key_or_seed, (bool, np.bool_)):
    raise TypeError(f'key_or_seed must be an int seed, a numpy Generator or a JAX key, got {key_or_seed!r}')
  if isinstance(key_or_seed, (int, np.integer)):
    return np.random.default_rng(int(key_or_seed))
  dtype = getattr(key_or_seed, 'dtype', None)
  if dtype is None:
    raise TypeError(f'key_or_seed must be an int seed, a numpy Generator or a JAX key, '
                    f'got {type(key_or_seed).__name__}')
  import jax  # only for JAX keys: a plain numpy user does not pay for importing JAX

  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    key_or_seed = jax.random.key_data(key_or_seed)
  data = np.asarray(key_or_seed)
  if data.dtype != np.uint32 or data.size == 0:
    raise TypeError(f'key_or_seed: expected a JAX PRNG key (uint32 key data), got dtype {data.dtype}')
  return np.random.default_rng([int(x) for x in data.ravel()])


def _check_pattern(pattern: str) -> None:
  if pattern not in PATTERNS:
    raise ValueError(f'pattern: unknown {pattern!r}; choose one of {list(PATTERNS)}')


def _check_int(value, name: str, minimum: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer, got {value!r}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}')
  return int(value)


def default_pool_size(pattern: str, num_queries: int) -> int:
  """The pool size m a pattern uses for Q queries when none is given (see the module docstring)."""
  _check_pattern(pattern)
  q = _check_int(num_queries, 'num_queries', 1)
  if pattern == 'dense':
    # Smallest m with C(m, 2) >= Q; the float root is only a first guess, fixed by exact integers.
    m = max(2, math.ceil((1 + math.sqrt(1 + 8 * q)) / 2))
    while math.comb(m - 1, 2) >= q:
      m -= 1
    while math.comb(m, 2) < q:
      m += 1
    return m
  if pattern == 'cycle':
    # A cycle needs 3 documents to give distinct pairs; 1 query needs just 2.
    return q if q >= 3 else q + 1
  return 2 * q  # disjoint and random


def max_queries(pattern: str, pool_size: int) -> int:
  """How many distinct pairs (queries) a pattern can give with a pool of ``pool_size`` documents."""
  _check_pattern(pattern)
  m = _check_int(pool_size, 'pool_size', 2)
  if pattern in ('dense', 'random'):
    return math.comb(m, 2)
  if pattern == 'cycle':
    return m if m >= 3 else 1  # with m = 2, (0, 1) and (1, 0) are the same pair
  return m // 2  # disjoint


def _unrank_pairs(ranks: np.ndarray, m: int) -> np.ndarray:
  """(Q, 2) pairs (a < b) at positions ``ranks`` of the lexicographic list of C(m, 2) pairs.

  Row a of that list starts at sum_{i<a} (m - 1 - i); a search over these m offsets finds each
  pair without building all C(m, 2) of them (a pool of 50,000 has 1.25e9 pairs).
  """
  starts = np.concatenate([[0], np.cumsum(np.arange(m - 1, 0, -1, dtype=np.int64))])
  a = np.searchsorted(starts, ranks, side='right') - 1
  b = a + 1 + (ranks - starts[a])
  return np.stack([a, b], axis=1).astype(np.int64)


def qrel_pairs(pattern: str, num_queries: int, pool_size: int | None = None, key_or_seed=0) -> np.ndarray:
  """The relevant pair of pool documents of each query (k = 2).

  Args:
    pattern: one of ``PATTERNS`` (see the module docstring).
    num_queries: Q >= 1.
    pool_size: m, the number of relevant documents; None for the pattern's default.
    key_or_seed: an int seed, a numpy Generator or a JAX key; only ``random`` draws from it.

  Returns:
    (Q, 2) int64 indices into the pool, two distinct documents per row; no two rows hold the same
    pair. ``dense`` and ``random`` rows are ordered a < b; ``cycle`` row i is (i, (i + 1) mod m).
  """
  _check_pattern(pattern)
  q = _check_int(num_queries, 'num_queries', 1)
  m = default_pool_size(pattern, q) if pool_size is None else _check_int(pool_size, 'pool_size', 2)
  available = max_queries(pattern, m)
  if q > available:
    raise ValueError(f'num_queries: {q} queries is more than the {available} distinct pairs that pattern '
                     f'{pattern!r} gives with pool_size {m}')
  if pattern == 'dense':
    return _unrank_pairs(np.arange(q, dtype=np.int64), m)
  if pattern == 'random':
    ranks = as_generator(key_or_seed).choice(math.comb(m, 2), size=q, replace=False)
    return _unrank_pairs(ranks.astype(np.int64), m)
  i = np.arange(q, dtype=np.int64)
  if pattern == 'cycle':
    return np.stack([i, (i + 1) % m], axis=1)
  return np.stack([2 * i, 2 * i + 1], axis=1)  # disjoint


def qrel_matrix(pairs, pool_size: int) -> np.ndarray:
  """(Q, m) bool qrel matrix: row q is True at the two pool documents of ``pairs[q]``."""
  pairs = np.asarray(pairs)
  m = _check_int(pool_size, 'pool_size', 2)
  if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
    raise ValueError(f'pairs must be a (Q, 2) integer array, got shape {pairs.shape} dtype {pairs.dtype}')
  if pairs.size and (pairs.min() < 0 or pairs.max() >= m):
    raise ValueError(f'pairs: indices must lie in [0, {m}) for pool_size {m}, '
                     f'got [{pairs.min()}, {pairs.max()}]')
  rel = np.zeros((pairs.shape[0], m), dtype=bool)
  rows = np.arange(pairs.shape[0])
  rel[rows, pairs[:, 0]] = True
  rel[rows, pairs[:, 1]] = True
  return rel


# ----------------------------------------------------------------------------------------------
# Corpus


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class LimitCorpus:
  """A LIMIT-style retrieval corpus.

  Attributes:
    corpus_ids: (D,) person names, the document ids (as in the released LIMIT corpus).
    corpus_texts: (D,) ``"<Name> likes A, B, ... and Z."``.
    query_ids: (Q,) ``query_<i>``.
    query_texts: (Q,) ``"Who likes X?"``.
    qrels: query_id -> {doc_id: 1} with the two relevant documents.
    pattern: the qrel pattern name.
    pairs: (Q, 2) int64 pool indices of each query's relevant documents (:func:`qrel_pairs`).
    pool_docs: (m,) int64 corpus index of each pool document.
    query_attributes: (Q,) the attribute X that query i asks about (liked by its two documents only).
    likes_per_doc: number of liked items listed by every document.
    seed: the seed the corpus was drawn from.
  """

  corpus_ids: list[str]
  corpus_texts: list[str]
  query_ids: list[str]
  query_texts: list[str]
  qrels: dict[str, dict[str, int]]
  pattern: str
  pairs: np.ndarray
  pool_docs: np.ndarray
  query_attributes: list[str]
  likes_per_doc: int
  seed: int

  @property
  def pool_size(self) -> int:
    return int(self.pool_docs.shape[0])

  def qrel_matrix(self) -> np.ndarray:
    """(Q, m) bool qrels over the pool documents (column j is corpus document ``pool_docs[j]``)."""
    return qrel_matrix(self.pairs, self.pool_size)

  def to_retrieval_data(self) -> RetrievalData:
    """The corpus as :class:`RetrievalData` (copies, so the result can be changed freely)."""
    return RetrievalData(
        corpus_ids=list(self.corpus_ids),
        corpus_texts=list(self.corpus_texts),
        query_ids=list(self.query_ids),
        query_texts=list(self.query_texts),
        qrels={q: dict(docs) for q, docs in self.qrels.items()},
    )

  def write_beir(self, folder: str | os.PathLike, split: str = 'test') -> Path:
    """Writes corpus.jsonl, queries.jsonl and qrels/<split>.tsv, each file atomically.

    ``embedjax.data.readers.read_beir(folder, split)`` reads back ``self.to_retrieval_data()``.
    """
    from embedjax.data.synthetic import write_beir  # the project's one BEIR writer
    return write_beir(self.to_retrieval_data(), folder, split)


def _distinct_rows(rng: np.random.Generator, population: int, rows: int, width: int) -> np.ndarray:
  """(rows, width) int64, each row ``width`` distinct values drawn uniformly from range(population).

  Drawing with replacement and redrawing rows that repeat a value is vectorised and fast when
  width << population (the usual case); rows still repeating after a few rounds are drawn one at
  a time without replacement, so small populations work too.
  """
  out = rng.integers(population, size=(rows, width), dtype=np.int64)

  def repeating(block: np.ndarray) -> np.ndarray:
    s = np.sort(block, axis=1)
    return np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))

  bad = repeating(out)
  for _ in range(4):
    if bad.size == 0:
      return out
    out[bad] = rng.integers(population, size=(bad.size, width), dtype=np.int64)
    bad = bad[repeating(out[bad])]
  for row in bad:
    out[row] = rng.choice(population, size=width, replace=False)
  return out


def _likes_text(name: str, items) -> str:
  """``"<Name> likes A, B and C."`` (no serial comma, as in the LIMIT corpus)."""
  if len(items) == 1:
    return f'{name} likes {items[0]}.'
  return f'{name} likes {", ".join(items[:-1])} and {items[-1]}.'


def generate_corpus(pattern: str, num_docs: int, num_queries: int, seed: int = 0,
                    pool_size: int | None = None, likes_per_doc: int | None = None) -> LimitCorpus:
  """A LIMIT-style corpus of ``num_docs`` people and ``num_queries`` "Who likes X?" queries.

  Randomness: the qrel pairs come from ``np.random.default_rng(seed)`` (so they equal
  ``qrel_pairs(..., seed)``); the names, the pool positions, the query attributes, the fillers and
  the order of the items within each document each come from their own stream spawned from
  ``np.random.SeedSequence(seed)``. So the documents outside the pool do not depend on the
  pattern: corpora of different patterns with the same seed, ``num_docs`` and ``likes_per_doc``
  share the text of every document that is in neither pool (an evaluation embeds them once).

  Args:
    pattern: one of ``PATTERNS``.
    num_docs: D, at least the pool size and at most ``MAX_DOCS``.
    num_queries: Q >= 1.
    seed: integer seed.
    pool_size: m, number of relevant documents; None for the pattern's default.
    likes_per_doc: items listed by every document; None for the largest number of query attributes
      a pool document carries, but at least ``MIN_LIKES_PER_DOC``.

  Returns:
    A :class:`LimitCorpus`.
  """
  seed = _check_int(seed, 'seed', 0)
  rng = np.random.default_rng(seed)
  pairs = qrel_pairs(pattern, num_queries, pool_size, rng)
  q = pairs.shape[0]
  m = default_pool_size(pattern, q) if pool_size is None else int(pool_size)
  d = _check_int(num_docs, 'num_docs', 1)
  if d < m:
    raise ValueError(f'num_docs ({d}) must be at least the pool size ({m})')
  if d > MAX_DOCS:
    raise ValueError(f'num_docs ({d}) is more than the {MAX_DOCS} distinct names available')

  # Query attributes each pool document must list: degree of the document in the pairs.
  degree = np.bincount(pairs.ravel(), minlength=m)
  needed = int(degree.max())
  if likes_per_doc is None:
    likes = max(needed, MIN_LIKES_PER_DOC)
  else:
    likes = _check_int(likes_per_doc, 'likes_per_doc', 1)
    if likes < needed:
      raise ValueError(f'likes_per_doc ({likes}) is less than the {needed} query attributes that a pool '
                       f'document of pattern {pattern!r} must list')
  if q > MAX_QUERIES:
    raise ValueError(f'num_queries ({q}) is more than the {MAX_QUERIES} distinct query attributes available')
  if likes > NUM_FILLERS:
    raise ValueError(f'likes_per_doc ({likes}) is more than the {NUM_FILLERS} distinct fillers available')

  r_names, r_pool, r_attributes, r_fillers, r_order = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
  names = [person_name(i) for i in r_names.choice(MAX_DOCS, size=d, replace=False)]
  pool_docs = r_pool.choice(d, size=m, replace=False).astype(np.int64)
  varieties = r_attributes.choice(MAX_QUERIES, size=q, replace=False)
  nouns = r_attributes.integers(len(_NOUNS), size=q)
  query_attributes = [f'{_VARIETIES[v]} {_NOUNS[n]}' for v, n in zip(varieties.tolist(), nouns.tolist())]

  # Item ids: 0 .. NUM_FILLERS - 1 are fillers, NUM_FILLERS + i is query i's attribute. Every
  # document starts with `likes` distinct fillers; a pool document then has its first degree[j]
  # slots overwritten by its query attributes (never equal to a filler, so items stay distinct).
  items = _distinct_rows(r_fillers, NUM_FILLERS, d, likes)
  owner = pairs.ravel()                                    # pool document of each (query, side)
  owned = NUM_FILLERS + np.repeat(np.arange(q), 2)         # the item it must list
  order = np.argsort(owner, kind='stable')
  owner, owned = owner[order], owned[order]
  slot = np.arange(owner.size) - np.searchsorted(owner, owner, side='left')  # 0, 1, ... per document
  items[pool_docs[owner], slot] = owned
  # Shuffle within each document so the query attributes do not sit in the first slots.
  items = r_order.permuted(items, axis=1)

  item_names = np.array([filler(i) for i in range(NUM_FILLERS)] + query_attributes, dtype=object)
  texts = [_likes_text(name, row) for name, row in zip(names, item_names[items].tolist())]
  query_ids = [f'query_{i}' for i in range(q)]
  qrels = {qid: {names[pool_docs[a]]: 1, names[pool_docs[b]]: 1}
           for qid, (a, b) in zip(query_ids, pairs.tolist())}
  return LimitCorpus(
      corpus_ids=names,
      corpus_texts=texts,
      query_ids=query_ids,
      query_texts=[f'Who likes {x}?' for x in query_attributes],
      qrels=qrels,
      pattern=pattern,
      pairs=pairs,
      pool_docs=pool_docs,
      query_attributes=query_attributes,
      likes_per_doc=likes,
      seed=seed,
  )
