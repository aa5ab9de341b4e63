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
from etils import epath

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

  def save(self, path) -> None:
    """Writes the table to `path` (an `etils.epath.Path` or a local path string)."""
    path = epath.Path(path)
    buffer = io.BytesIO()
    np.savez(buffer, words=np.array(self.words, dtype=str), vectors=self.vectors, trainable=np.array(self.trainable))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())

  @classmethod
  def load(cls, path) -> 'WordTable':
    path = epath.Path(path)
    try:
      data = path.read_bytes()
    except FileNotFoundError:
      raise FileNotFoundError(f'Word table {path} does not exist (written by --mode=prepare)') from None
    try:
      with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return cls(tuple(str(w) for w in arrays['words']), arrays['vectors'].astype(np.float32),
                   bool(arrays['trainable']))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
      raise ValueError(f'{path} is not a word table: {error}') from error


def vocabulary(sentences: Iterable[str]) -> list[str]:
  """Sorted tokens of the sentences and their mirror images (a flipped "left" reads "right"); no pad token."""
  tokens = {t for s in sentences for t in tokenizer.tokenize(s)}
  tokens |= {tokenizer.MIRRORED_WORDS[t] for t in tokens if t in tokenizer.MIRRORED_WORDS}
  return sorted(tokens - {tokenizer.PAD_TOKEN})


def _glove_lines(path: epath.Path) -> Iterator[tuple[bytes, int]]:
  """(line, bytes of the file read so far) of a GloVe .txt or of the single .txt inside a .zip."""
  with path.open('rb') as raw:
    if zipfile.is_zipfile(raw):
      raw.seek(0)
      with zipfile.ZipFile(raw) as archive:
        members = [m for m in archive.infolist() if m.filename.endswith('.txt')]
        if len(members) != 1:
          raise ValueError(f'{path} should hold one .txt file, found {[m.filename for m in members]}')
        with archive.open(members[0]) as f:
          for line in io.BufferedReader(f, 1 << 20):
            yield line, raw.tell()
    else:
      raw.seek(0)
      for line in io.BufferedReader(raw, 1 << 20):
        yield line, raw.tell()


def from_glove(path: str | os.PathLike, words: Iterable[str], dim: int = GLOVE_DIM,
               progress: bool = True) -> WordTable:
  """A table of the given words with their GloVe vectors (unknown words are left out: they map to zero).

  Lines are `word v1 ... v_dim` separated by single spaces. Lines with another number of fields (the 840B file
  has a few whose "word" contains spaces) are skipped and counted, as no tokenizer output can match them; when a
  word occurs twice the later line wins, like torchtext's lookup.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'GloVe file {path} does not exist')
  wanted = set(words) - {tokenizer.PAD_TOKEN, UNKNOWN_TOKEN}
  found: dict[str, np.ndarray] = {}
  malformed = 0
  size = path.stat().length
  with tqdm.tqdm(total=size, unit='B', unit_scale=True, desc=f'GloVe {path.name}',
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
        raise ValueError(f'{path} line {number}: the vector of {word!r} is not numeric ({error})') from None
    bar.update(size - bar.n)
  if not found and wanted:
    raise ValueError(f'None of the {len(wanted)} words occur in {path}: is it a GloVe text file with '
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


def subset(table: WordTable, words: list[str]) -> WordTable:
  """The rows of `table` for `words` (words outside it are left out: they map to the unknown row)."""
  known = set(table.words[2:])
  kept = [w for w in dict.fromkeys(words) if w in known]
  return WordTable(table.words[:2] + tuple(kept), table.vectors[[0, 1, *table.ids(kept)]], table.trainable)


def merge(tables: list[WordTable]) -> WordTable:
  """The union of several data sets' tables (which must agree on the kind and on every shared word)."""
  if len({t.trainable for t in tables}) > 1 or len({t.dim for t in tables}) > 1:
    raise ValueError('The data sets\' word tables differ in kind (GloVe / learned) or size: prepare them again '
                     'with the same config.data.glove_path (--mode=prepare --rebuild_word_tables)')
  rows = {}
  for table in tables:
    for word, vector in zip(table.words[2:], table.vectors[2:]):
      if word in rows and not (rows[word] == vector).all():
        raise ValueError(f'The data sets\' word tables disagree on {word!r}: prepare them again from one GloVe file')
      rows[word] = vector
  words = sorted(rows)
  vectors = np.concatenate([tables[0].vectors[:2], *([np.stack([rows[w] for w in words])] if words else [])])
  return WordTable(tables[0].words[:2] + tuple(words), vectors, tables[0].trainable)
