"""Tokenizer (against the reference's own output) and word-vector tables."""

import json
import zipfile

import numpy as np
import pytest

from conftest import REFERENCE
from data_fakes import write_glove
from data_pipeline import glove, tokenizer

REFERENCE_TOKENS = json.loads((REFERENCE / 'tokenize.json').read_text())


@pytest.mark.parametrize('item', REFERENCE_TOKENS['items'], ids=lambda item: repr(item['sentence'])[:40])
def test_tokenizer_matches_reference(item):
  tokens, mask = tokenizer.pad_tokens(item['sentence'], REFERENCE_TOKENS['max_len'])
  assert tokens == item['tokens']
  assert mask.tolist() == item['phrase_mask']


def test_tokenizer_rejects_nonpositive_length():
  with pytest.raises(ValueError, match='max_words'):
    tokenizer.pad_tokens('a dog', 0)


@pytest.fixture
def glove_words():
  rng = np.random.default_rng(0)
  return {word: rng.standard_normal(6).astype(np.float32) for word in ('the', 'dog', 'left', 'café', ',')}


def test_glove_keeps_only_wanted_words_and_zeroes_the_rest(tmp_path, glove_words):
  path = tmp_path / 'glove.txt'
  write_glove(path, glove_words, extra_lines=['. . . 0.1 0.2 0.3 0.4 0.5 0.6', 'dog ' + ' '.join(['9'] * 6)])
  words = glove.vocabulary(['The dog, on the left.', 'a café'])
  table = glove.from_glove(path, words, dim=6, progress=False)
  assert not table.trainable
  assert set(table.words) == {'', '<unk>', 'the', 'dog', 'left', 'café'}  # ", " and "a", "on" are not in GloVe
  tokens, mask = tokenizer.pad_tokens('The dog, on the left', 8)
  ids = table.ids(tokens)
  vectors = table.vectors[ids]
  np.testing.assert_allclose(vectors[0], glove_words['the'], atol=1e-6)
  np.testing.assert_array_equal(vectors[1], np.full(6, 9.0))  # a repeated word: the later line wins
  assert ids[2] == glove.UNKNOWN_ID and not vectors[2].any()  # the separator ", "
  assert not vectors[mask == 0].any()  # pad rows are zero
  np.testing.assert_allclose(table.vectors[table.words.index('café')], glove_words['café'], atol=1e-6)


def test_glove_zip_gives_the_same_table(tmp_path, glove_words):
  write_glove(tmp_path / 'glove.840B.300d.txt', glove_words)
  with zipfile.ZipFile(tmp_path / 'glove.zip', 'w') as archive:
    archive.write(tmp_path / 'glove.840B.300d.txt', 'glove.840B.300d.txt')
  plain = glove.from_glove(tmp_path / 'glove.840B.300d.txt', glove_words, dim=6, progress=False)
  zipped = glove.from_glove(tmp_path / 'glove.zip', glove_words, dim=6, progress=False)
  assert plain.words == zipped.words
  np.testing.assert_array_equal(plain.vectors, zipped.vectors)


def test_glove_errors_name_the_file(tmp_path, glove_words):
  with pytest.raises(FileNotFoundError, match='missing.txt'):
    glove.from_glove(tmp_path / 'missing.txt', ['dog'], dim=6)
  write_glove(tmp_path / 'glove.txt', glove_words)
  with pytest.raises(ValueError, match='None of the'):
    glove.from_glove(tmp_path / 'glove.txt', ['dog'], dim=300, progress=False)  # wrong dimension
  (tmp_path / 'short.txt').write_text('dog 0.1 0.2\ncat ' + ' '.join(['0.5'] * 6) + '\n')
  table = glove.from_glove(tmp_path / 'short.txt', ['dog', 'cat'], dim=6, progress=False)
  assert table.words[2:] == ('cat',)  # the malformed line of a wanted word is skipped, not half-read
  (tmp_path / 'bad.txt').write_text('dog ' + ' '.join(['x'] * 6) + '\n')
  with pytest.raises(ValueError, match=r'bad.txt.*line 1.*dog'):
    glove.from_glove(tmp_path / 'bad.txt', ['dog'], dim=6, progress=False)


def test_learned_table_is_deterministic_per_word():
  small = glove.learned(['dog', 'cat'], dim=8, seed=3)
  large = glove.learned(['dog', 'cat', 'zebra'], dim=8, seed=3)
  assert small.trainable
  for word in ('dog', 'cat'):
    np.testing.assert_array_equal(small.vectors[small.words.index(word)], large.vectors[large.words.index(word)])
  other_seed = glove.learned(['dog', 'cat'], dim=8, seed=4)
  assert not np.array_equal(small.vectors[2:], other_seed.vectors[2:])
  assert not small.vectors[:2].any()  # pad and unknown start at zero


def test_word_table_round_trip_and_bad_files(tmp_path):
  table = glove.learned(['dog', 'café'], dim=4)
  table.save(tmp_path / 'words.npz')
  loaded = glove.WordTable.load(tmp_path / 'words.npz')
  assert loaded.words == table.words and loaded.trainable
  np.testing.assert_array_equal(loaded.vectors, table.vectors)
  with pytest.raises(FileNotFoundError, match='nothing.npz'):
    glove.WordTable.load(tmp_path / 'nothing.npz')
  (tmp_path / 'corrupt.npz').write_bytes(b'not a table')
  with pytest.raises(ValueError, match='corrupt.npz'):
    glove.WordTable.load(tmp_path / 'corrupt.npz')
  with pytest.raises(ValueError, match='starts with'):
    glove.WordTable(('dog',), np.zeros((1, 4), np.float32), False)
