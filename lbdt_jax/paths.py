"""User paths, local or in a bucket (`gs://...`): every file the program reads or writes goes through here.

Paths are `etils.epath.Path` (the library orbax uses). Bucket URLs are served by TensorFlow's `tf.io.gfile` when
TensorFlow is installed, or by fsspec/gcsfs with `EPATH_USE_TF=false`; local paths get `~` expanded and are made
absolute (so that messages name them in full). Libraries that only take local file names (OpenCV's video
reader and writer) get a local copy through `local_copy` / `local_output`.
"""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

SCHEMES = ('gs://', 's3://', 'az://', 'hf://')


class BucketError(OSError):
  """A bucket URL that cannot be reached or used; the message names it."""


def is_remote(value: str | os.PathLike) -> bool:
  return os.fspath(value).startswith(SCHEMES)


def path(value: str | os.PathLike) -> epath.Path:
  """A user path: a bucket URL unchanged, a local path with `~` expanded and made absolute."""
  text = os.fspath(value)
  if not text:
    raise ValueError('An empty path was given')
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def check_writable(directory: epath.Path) -> None:
  """Creates `directory` (and parents); a missing or unreachable bucket is a `BucketError` naming it."""
  if is_remote(directory):
    scheme, rest = os.fspath(directory).split('://', 1)
    bucket = epath.Path(f'{scheme}://{rest.split("/", 1)[0]}')
    try:
      exists = bucket.exists()
    except Exception as error:  # each storage client raises its own types
      raise BucketError(f'Cannot reach {bucket} (for {directory}): {type(error).__name__}: {_first_line(error)}. '
                        'Check the bucket name, credentials and network') from error
    if not exists:
      raise BucketError(f'Bucket {bucket} (for {directory}) does not exist or is not visible with these '
                        'credentials')
  directory.mkdir(parents=True, exist_ok=True)


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def read_json(file: epath.Path, what: str = 'file'):
  try:
    return json.loads(file.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f'{what} {file} does not exist') from None
  except ValueError as error:
    raise ValueError(f'{what} {file} is not valid JSON: {error}') from None


def write_json(file: epath.Path, value, indent: int | None = 2) -> epath.Path:
  file.parent.mkdir(parents=True, exist_ok=True)
  file.write_text(json.dumps(value, indent=indent))
  return file


@contextlib.contextmanager
def local_copy(file: epath.Path) -> Iterator[str]:
  """A local file name holding `file`'s bytes (the file itself when it is local)."""
  if not is_remote(file):
    yield os.fspath(file)
    return
  with tempfile.TemporaryDirectory(prefix='lbdt_jax_') as scratch:
    local = os.path.join(scratch, file.name)
    with file.open('rb') as source, open(local, 'wb') as target:
      shutil.copyfileobj(source, target, 1 << 22)
    yield local


@contextlib.contextmanager
def local_output(file: epath.Path) -> Iterator[str]:
  """A local file name to write; its content lands in `file` when the block ends without an error."""
  if not is_remote(file):
    file.parent.mkdir(parents=True, exist_ok=True)
    yield os.fspath(file)
    return
  with tempfile.TemporaryDirectory(prefix='lbdt_jax_') as scratch:
    local = os.path.join(scratch, file.name)
    yield local
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(local, 'rb') as source, file.open('wb') as target:
      shutil.copyfileobj(source, target, 1 << 22)
