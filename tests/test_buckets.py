"""A run that lives in a bucket: a GCS-compatible server on localhost (gcp-storage-emulator) holds the work
directory, the exported model, the video and the predictions, and nothing of the run is written to local disk.

Which layer reaches the server how: etils.epath through fsspec/gcsfs (`EPATH_USE_TF=false`,
`STORAGE_EMULATOR_HOST`), orbax's arrays through tensorstore (`TENSORSTORE_GCS_HTTP_URL`). TensorFlow's own GCS
client (TensorBoard events) has no setting that points it at another server: here the events go to a local
directory, and `test_tensorboard_events_follow_the_work_directory` checks the URL TensorFlow is given.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import gcs_server
from conftest import ROOT, TRAINER_MODEL_FLAGS
from configs import tiny
from lbdt_jax import checkpointing, paths

BUCKET = 'lbdt-test'


@pytest.fixture(scope='module')
def server():
  emulator, url = gcs_server.start(BUCKET)
  yield url
  emulator.stop()


@pytest.fixture(scope='module')
def bucket(server):
  os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'  # before gcsfs is imported: no gRPC layout probe
  import gcsfs  # pylint: disable=import-outside-toplevel
  return gcsfs.GCSFileSystem(endpoint_url=server, token='anon')


def _environment(server, local):
  """The emulator for every layer that can be pointed at it; HOME, TMPDIR and the working directory empty."""
  return {**os.environ, 'EPATH_USE_TF': 'false', 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
          'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'dummy', 'STORAGE_EMULATOR_HOST': server,
          'TENSORSTORE_GCS_HTTP_URL': server, 'CLOUD_STORAGE_EMULATOR_ENDPOINT': server,
          'HOME': str(local / 'home'), 'TMPDIR': str(local / 'tmp'), 'PYTHONPATH': str(ROOT)}


def _files(directory):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


def _main_commands(server, local, commands):
  """main.py's command lines, one after the other in one process (tests/main_commands.py)."""
  (local / 'commands.json').write_text(json.dumps([[f'--config={ROOT / "configs" / "tiny.py"}', *command]
                                                   for command in commands]))
  result = subprocess.run([sys.executable, str(ROOT / 'tests' / 'main_commands.py'), str(local / 'commands.json'),
                           str(local / 'results.json')], cwd=local / 'cwd',
                          env=_environment(server, local), capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  results = json.loads((local / 'results.json').read_text())
  (local / 'commands.json').unlink()
  (local / 'results.json').unlink()
  return results


@pytest.fixture(scope='module')
def bucket_run(server, bucket, data_dir, tmp_path_factory):
  """Train, resume, evaluate, export and predict in the bucket, then a run in a bucket that does not exist: the
  commands of main.py, in one process whose working directory, HOME and TMPDIR are empty local directories."""
  local = tmp_path_factory.mktemp('local')
  for name in ('cwd', 'home', 'tmp', 'tensorboard'):
    (local / name).mkdir()
  frames = [np.full((40, 56, 3), 30 + 20 * t, np.uint8) for t in range(5)]
  video = local / 'clip.mp4'
  writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 5, (56, 40))
  for frame in frames:
    writer.write(frame)
  writer.release()
  bucket.put(str(video), f'{BUCKET}/videos/clip.mp4')
  video.unlink()
  run, common = f'gs://{BUCKET}/run', [f'--config.data.data_dir={data_dir}', *TRAINER_MODEL_FLAGS,
                                        f'--config.train.tensorboard_dir={local / "tensorboard"}']
  results = _main_commands(server, local, [
      [f'--workdir={run}', '--config.train.num_steps=2', *common],
      [f'--workdir={run}', '--config.train.num_steps=4', *common],
      ['--mode=evaluate', f'--workdir={run}', *common],
      ['--mode=export', f'--workdir={run}', f'--output=gs://{BUCKET}/model', *common],
      ['--mode=predict', f'--model=gs://{BUCKET}/model', f'--video=gs://{BUCKET}/videos/clip.mp4',
       '--sentence=the square', f'--output=gs://{BUCKET}/predictions', '--batch_size=2'],
      ['--workdir=gs://no-such-bucket/run', *common]])
  return local, len(frames), results


@pytest.mark.heavy(100)
@pytest.mark.xdist_group('bucket')
def test_train_resume_evaluate_export_predict_in_a_bucket(bucket_run, bucket):
  local, frames, results = bucket_run
  for result in results[:-1]:
    assert result['status'] == 0, f'main.py {" ".join(result["argv"])}:\n{result["stderr"][-3000:]}'
  trained, resumed, evaluated = (result['stdout'] for result in results[:3])
  assert 'Resuming' not in trained and 'Resuming from the checkpoint of step 2' in resumed
  assert 'Evaluating the checkpoint of step 4' in evaluated
  stored = set(bucket.find(BUCKET))
  for name in ('run/checkpoints/2/state/_METADATA', 'run/checkpoints/4/data/metadata', 'run/model_config.json',
               'run/export/manifest.json', 'run/eval/step_4/results.json', 'model/variables/_METADATA',
               'model/word_table.npz', 'predictions/predictions.json', 'predictions/overlay.mp4',
               'predictions/masks/0_the_square/00004.png'):
    assert f'{BUCKET}/{name}' in stored, name
  results = json.loads(bucket.cat(f'{BUCKET}/run/eval/step_4/results.json'))
  assert results['synthetic_rvos:validation']['num_samples'] > 0
  assert json.loads(bucket.cat(f'{BUCKET}/predictions/predictions.json'))['frames'] == frames
  for name in ('cwd', 'tmp'):
    assert _files(local / name) == [], name  # before: ./gs:/lbdt-test/run/... appeared in cwd
  # HOME: only the caches libraries keep there (matplotlib's font list, keras' configuration)
  assert all(name.startswith(('.cache/', '.keras/')) for name in _files(local / 'home')), _files(local / 'home')
  assert _files(local / 'tensorboard')  # TensorFlow's GCS client cannot reach the emulator (module docstring)


@pytest.mark.xdist_group('bucket')
def test_a_missing_bucket_is_named(bucket_run):
  missing = bucket_run[2][-1]
  assert missing['status'] == 1, missing['stderr'][-3000:]
  assert any(line.startswith('Error: Bucket gs://no-such-bucket') for line in missing['stderr'].splitlines())


def test_tensorboard_events_follow_the_work_directory(monkeypatch):
  """The URL handed to TensorFlow's summary writer is the bucket's, not a local path made from it."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  from clu.metric_writers import utils  # pylint: disable=import-outside-toplevel
  given = []
  monkeypatch.setattr(utils, 'SummaryWriter', lambda logdir: given.append(logdir) or
                      metric_writers.LoggingWriter())
  config = tiny.get_config()
  checkpointing.metric_writer(config, paths.path('gs://bucket/run'), 'eval')
  config.train.tensorboard_dir = 'gs://other/events'
  checkpointing.metric_writer(config, paths.path('gs://bucket/run'))
  assert given == ['gs://bucket/run/eval', 'gs://other/events']
