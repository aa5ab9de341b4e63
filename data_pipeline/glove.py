"""Word vectors: a compact table holding only the words a data set uses.

`from_glove` streams the standard `glove.840B.300d.txt` (or its `.zip`) once and keeps the rows of the words asked
for; words GloVe lacks, the separator tokens and the pad token get the zero vector, as the reference's torchtext
lookup gives them. Without a GloVe file, `learned` gives every word a deterministic starting vector that training
then updates (documented in the README as the fallback; results are not comparable with the paper's).

Row 0 is the pad token "" and row 1 stands for every word outside the table; both are zero in GloVe tables.
"""

import dataclasses
import io
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
import tqdm

from data_pipeline import tokenizer

UNKNOWN_TOKEN = '<unk>'
PAD_ID, UNKNOWN_ID = 0, 1
GLOVE_DIM = 300


@dataclasses.dataclass(frozen=True, eq=False)
class WordTable:
  """words[i] has vector vectors[i]; `trainable` tables are model parameters, GloVe tables stay fixed."""
  words: tuple[str, ...]
  vectors: np.ndarray
  trainable: bool

  def __post_init__(self):
    if self.words[:2] != (tokenizer.PAD_TOKEN, UNKNOWN_TOKEN):
      raise ValueError(f'A word table starts with the pad token "" and {UNKNOWN_TOKEN!r}, got {self.words[:2]}')
    if self.vectors.shape[0] != len(self.words) or self.vectors.ndim != 2:
      raise ValueError(f'{len(self.words)} words need a [{len(self.words)}, dim] matrix, got {self.vectors.shape}')
    if len(set(self.words)) != len(self.words):
      raise ValueError('A word table lists each word once')

  @property
  def dim(self) -> int:
    return self.vectors.shape[1]

  def ids(self, tokens: Iterable[str]) -> np.ndarray:
    index = self._index
    return np.array([index.get(token, UNKNOWN_ID) for token in tokens], np.int32)

  @property
  def _index(self) -> dict[str, int]:
    if '_index_cache' not in self.__dict__:
      object.__setattr__(self, '_index_cache', {word: i for i, word in enumerate(self.words)})
    return self.__dict__['_index_cache']

  def save(self, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'wb') as f:  # an open file keeps numpy from appending ".npz" to the name
      np.savez(f, words=np.array(self.words, dtype=str), vectors=self.vectors,
               trainable=np.array(self.trainable))

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'WordTable':
    if not os.path.exists(path):
      raise FileNotFoundError(f'Word table {os.fspath(path)!r} does not exist (written by --mode=prepare)')
    try:
      with np.load(path, allow_pickle=False) as data:
        return cls(tuple(str(w) for w in data['words']), data['vectors'].astype(np.float32),
                   bool(data['trainable']))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
      raise ValueError(f'{os.fspath(path)!r} is not a word table: {error}') from error


def vocabulary(sentences: Iterable[str]) -> list[str]:
  """Sorted tokens of the sentences and their mirror images (a flipped "left" reads "right"); no pad token."""
  tokens = {t for s in sentences for t in tokenizer.tokenize(s)}
  tokens |= {tokenizer.MIRRORED_WORDS[t] for t in tokens if t in tokenizer.MIRRORED_WORDS}
  return sorted(tokens - {tokenizer.PAD_TOKEN})


def _glove_lines(path: str) -> Iterator[tuple[bytes, int]]:
  """(line, bytes read so far) of a GloVe .txt or the single .txt inside a .zip."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      members = [m for m in archive.infolist() if m.filename.endswith('.txt')]
      if len(members) != 1:
        raise ValueError(f'{path!r} should hold one .txt file, found {[m.filename for m in members]}')
      with archive.open(members[0]) as f:
        for line in io.BufferedReader(f, 1 << 20):
          yield line, archive.fp.tell() if archive.fp else 0
  else:
    with open(path, 'rb', buffering=1 << 20) as f:
      for line in f:
        yield line, f.tell()


def from_glove(path: str | os.PathLike, words: Iterable[str], dim: int = GLOVE_DIM,
               progress: bool = True) -> WordTable:
  """A table of the given words with their GloVe vectors (unknown words are left out: they map to zero).

  Lines are `word v1 ... v_dim` separated by single spaces. Lines with another number of fields (the 840B file
  has a few whose "word" contains spaces) are skipped and counted, as no tokenizer output can match them; when a
  word occurs twice the later line wins, like torchtext's lookup.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'GloVe file {path!r} does not exist')
  wanted = set(words) - {tokenizer.PAD_TOKEN, UNKNOWN_TOKEN}
  found: dict[str, np.ndarray] = {}
  malformed = 0
  size = os.path.getsize(path)
  with tqdm.tqdm(total=size, unit='B', unit_scale=True, desc=f'GloVe {os.path.basename(path)}',
                 disable=not progress) as bar:
    for number, (line, position) in enumerate(_glove_lines(path), 1):
      if number % 20000 == 0:
        bar.update(position - bar.n)
      head, _, rest = line.rstrip(b'\r\n').partition(b' ')
      try:
        word = head.decode('utf-8')
      except UnicodeDecodeError:
        malformed += 1
        continue
      if word not in wanted:
        continue
      fields = rest.split(b' ')
      if len(fields) != dim:
        malformed += 1
        continue
      try:
        found[word] = np.array(fields, np.float32)
      except ValueError as error:
        raise ValueError(f'{path!r} line {number}: the vector of {word!r} is not numeric ({error})') from None
    bar.update(size - bar.n)
  if not found and wanted:
    raise ValueError(f'None of the {len(wanted)} words occur in {path!r}: is it a GloVe text file with '
                     f'{dim}-d vectors?')
  logging.info('GloVe: %d of %d words found (%d tokens, e.g. separators, get the zero vector); %d lines '
               'skipped as malformed.', len(found), len(wanted), len(wanted) - len(found), malformed)
  table_words = sorted(found)
  vectors = np.zeros((len(table_words) + 2, dim), np.float32)
  if table_words:
    vectors[2:] = np.stack([found[w] for w in table_words])
  return WordTable((tokenizer.PAD_TOKEN, UNKNOWN_TOKEN, *table_words), vectors, trainable=False)


def learned(words: Iterable[str], dim: int = GLOVE_DIM, seed: int = 0, scale: float = 0.4) -> WordTable:
  """The no-GloVe fallback: N(0, scale²) vectors that depend only on (seed, word), so adding words to the data
  leaves the others' starting vectors unchanged. scale 0.4 is about the spread of GloVe 840B's components."""
  table_words = sorted(set(words) - {tokenizer.PAD_TOKEN, UNKNOWN_TOKEN})
  vectors = np.zeros((len(table_words) + 2, dim), np.float32)
  for row, word in enumerate(table_words, 2):
    rng = np.random.default_rng([seed, zlib.crc32(word.encode('utf-8'))])
    vectors[row] = rng.normal(0.0, scale, dim)
  return WordTable((tokenizer.PAD_TOKEN, UNKNOWN_TOKEN, *table_words), vectors, trainable=True)
