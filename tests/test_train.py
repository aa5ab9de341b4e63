"""The trainer: the train step on a toy model (gradient accumulation, NaN handling); a run of the tiny config
(outputs, resumption, damaged checkpoints, export, evaluation); SIGTERM and kill -9; devices and processes. Runs
use the tiny model less its second stream and an LBDT stage (conftest.TRAINER_MODEL)."""

import concurrent.futures
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, TRAINER_MODEL, TRAINER_MODEL_FLAGS
from configs import tiny
from lbdt_jax import checkpointing, evaluate, export, inference, model_dir, serving, sharding, train



def tiny_config(data_dir, **train_overrides):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.model.update(TRAINER_MODEL)
  config.train.update(train_overrides)
  return config


# The train step on a toy model: a linear regression whose batch statistics record what each (micro)batch saw.

def toy_loss(params, batch_stats, batch, key):
  del key
  residuals = batch['x'] @ params['model']['w'] - batch['y']
  loss = jnp.mean(residuals**2)
  seen = {'rows': batch_stats['rows'] + batch['x'].shape[0], 'first_row': batch['x'][0]}
  return loss, (seen, {'mse': loss})


def toy_step(accumulation_steps):
  config = tiny.get_config()
  optimizer = train.make_optimizer(config, train_word_vectors=True)
  step = functools.partial(train.train_step, loss_fn=toy_loss, optimizer=optimizer,
                           schedule=train.learning_rate_schedule(config, steps_per_epoch=10),
                           dropout_key=jax.random.key(0), accumulation_steps=accumulation_steps)
  params = {'model': {'w': jnp.array([1.0, -1.0, 2.0])}, 'word_vectors': jnp.ones((2, 2))}
  state = train.TrainState(step=jnp.int32(0), params=params,
                           batch_stats={'rows': jnp.float32(0), 'first_row': jnp.zeros(3)},
                           opt_state=optimizer.init(params), nonfinite_in_row=jnp.int32(0),
                           nonfinite_total=jnp.int32(0))
  return jax.jit(step), state


def toy_batches(count, size=8):
  """Small integers: with integer weights (before the first update) every sum and mean of a step is exact in
  float32, whatever the summation order."""
  rng = np.random.default_rng(0)
  return [{'x': rng.integers(-3, 4, (size, 3)).astype(np.float32), 'y': rng.integers(-3, 4, size).astype(np.float32)}
          for _ in range(count)]


@pytest.mark.parametrize('accumulation_steps', [2, 4])
def test_accumulated_microbatches_give_the_update_of_the_whole_batch(accumulation_steps):
  """Exactly at the first step (all sums exact); to rounding after it (the weights are no longer integers)."""
  whole_step, whole = toy_step(1)
  step, accumulated = toy_step(accumulation_steps)
  for index, batch in enumerate(toy_batches(3)):
    whole, whole_metrics = whole_step(whole, batch)
    accumulated, metrics = step(accumulated, batch)
    check = np.testing.assert_array_equal if index == 0 else functools.partial(np.testing.assert_allclose,
                                                                              rtol=1e-5, atol=1e-6)
    for key in ('loss', 'mse', 'grad_norm', 'learning_rate', 'skipped_update'):
      check(metrics[key], whole_metrics[key], err_msg=key)
    jax.tree.map(check, accumulated.params, whole.params)
    jax.tree.map(check, accumulated.opt_state, whole.opt_state)
    # Microbatch k takes every accumulation_steps-th example: the last one starts at row accumulation_steps - 1.
    np.testing.assert_array_equal(accumulated.batch_stats['first_row'], batch['x'][accumulation_steps - 1])
  assert float(accumulated.batch_stats['rows']) == float(whole.batch_stats['rows']) == 3 * 8  # every microbatch
  assert not np.allclose(whole.params['model']['w'], [1.0, -1.0, 2.0])  # it trained


@pytest.mark.parametrize('accumulation_steps', [1, 2])
def test_nonfinite_updates_are_skipped_and_counted(accumulation_steps):
  step, state = toy_step(accumulation_steps)
  before = jax.tree.map(np.asarray, state)
  poisoned = toy_batches(1)[0]
  poisoned['x'][5, 1] = np.nan
  state, metrics = step(state, poisoned)
  jax.tree.map(np.testing.assert_array_equal, state.params, before.params)
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, before.batch_stats)
  jax.tree.map(np.testing.assert_array_equal, state.opt_state, before.opt_state)
  assert (int(state.step), int(state.nonfinite_in_row), int(state.nonfinite_total)) == (1, 1, 1)
  assert float(metrics['skipped_update']) == 1.0 and int(metrics['nonfinite_in_row']) == 1
  state, metrics = step(state, toy_batches(1)[0])
  assert not np.array_equal(state.params['model']['w'], before.params['model']['w'])
  assert (int(state.step), int(state.nonfinite_in_row), int(state.nonfinite_total)) == (2, 0, 1)
  assert float(metrics['skipped_update']) == 0.0
  config = tiny.get_config()
  config.train.max_nonfinite_in_row = 3
  train._check_finite(np.int32(1), config, 1)  # one in a row: only a warning
  with pytest.raises(train.NonFiniteError, match='3 consecutive steps up to step 7'):
    train._check_finite(np.int32(3), config, 7)


def test_schedule_halves_at_the_decay_epochs():
  config = tiny.get_config()
  config.optimizer.update(learning_rate=1e-4, decay_epochs=(10, 12, 14), decay_factor=0.5)
  schedule = train.learning_rate_schedule(config, steps_per_epoch=100)
  rates = [float(schedule(step)) for step in (0, 999, 1000, 1199, 1200, 1400, 1500)]
  np.testing.assert_allclose(rates, [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 1.25e-5, 1.25e-5])


@pytest.mark.parametrize('name', ['adamw', 'adam'])
def test_fixed_word_vectors_stay_fixed(name):
  config = tiny.get_config()
  config.optimizer.name = name
  params = {'model': {'w': np.ones(3, np.float32)}, 'word_vectors': np.ones((4, 2), np.float32)}
  grads = jax.tree.map(np.ones_like, params)
  for trainable in (False, True):
    optimizer = train.make_optimizer(config, trainable)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert np.any(updates['model']['w'] != 0)
    assert np.any(updates['word_vectors'] != 0) == trainable


@pytest.mark.parametrize('field, value, message', [
    ('train.accumulation_steps', 0, 'accumulation_steps must be at least 1'),
    ('train.log_every_steps', 0, 'log_every_steps must be at least 1'),
    ('train.batch_size', 6, 'must be a multiple of config.train.accumulation_steps'),
    ('eval.batch_size', 0, 'config.eval.batch_size'),
])
def test_bad_training_settings_are_named(data_dir, field, value, message):
  config = tiny_config(data_dir, accumulation_steps=4 if field == 'train.batch_size' else 1)
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    train.build_trainer(config)


def test_per_device_batch_sizes_become_the_global_batch_of_the_run(data_dir):
  """`gpu`/`tpu`-style settings: examples per device × devices × microbatches, the rate scaled with the batch."""
  config = tiny_config(data_dir, batch_size=999, per_device_batch_size=2, accumulation_steps=2)
  config.eval.per_device_batch_size = 3
  config.optimizer.update(lr_batch_scaling='linear', base_batch_size=2)
  trainer = train.build_trainer(config)
  assert (trainer.config.train.batch_size, trainer.config.eval.batch_size) == (4, 3)  # one device here
  assert trainer.train_iterator.batch_size == 4
  assert trainer.config.optimizer.learning_rate == pytest.approx(2 * config.optimizer.learning_rate)


# A run of the tiny config, and what follows from it. These tests share one xdist worker (and the run).

trained_run = pytest.mark.xdist_group('trained_run')


# The run's length and checkpoints; also what main.py runs in test_sigterm_and_kill_9_then_resume_is_bit_identical.
STEPS, EVERY = 40, 10


def run_config(data_dir, **train_overrides):
  return tiny_config(data_dir, num_steps=STEPS, checkpoint_every_steps=EVERY, log_every_steps=10, **train_overrides)


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = run_config(data_dir)
  config.eval.update(pictures=4, attention_maps=True)
  results = train.train_and_evaluate(config, str(workdir))
  return workdir, results


def checkpoint_steps(workdir):
  return sorted(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())


@pytest.mark.heavy(400)
@trained_run
def test_run_writes_checkpoints_export_logs_and_results(finished_run):
  workdir, results = finished_run
  assert checkpoint_steps(workdir) == [10, 20, 30, 40]
  for name in ('model_config.json', 'word_table.npz', 'config.json'):
    assert (workdir / 'export' / name).is_file()
  # The serving artefact of the trained parameters (its outputs are checked in test_serving.py).
  exported, served = model_dir.read(workdir / 'export'), serving.load(workdir / 'export')
  np.testing.assert_array_equal(served.word_vectors, exported.table.vectors)
  assert len(served.variables) == len(inference.flat_variables(exported.variables))
  assert set(served.exported.platforms) == set(inference.SERVING_PLATFORMS)
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  validation = results['synthetic_rvos:validation']
  per_cue = validation['per_cue']
  assert set(per_cue) <= {'appearance', 'motion', 'both'} and per_cue
  # The set's numbers are those of all its samples: the per-cue ones, weighted by their sample counts.
  assert validation['num_samples'] == sum(r['num_samples'] for r in per_cue.values()) > 0
  assert validation['mean_IoU'] == pytest.approx(
      sum(r['mean_IoU'] * r['num_samples'] for r in per_cue.values()) / validation['num_samples'])
  assert 'coco_mAP' in validation
  for picture in ('predictions.png', 'clip.gif', 'attention_stage5_layer0.png'):
    assert (workdir / 'pictures' / picture).is_file()
  assert results['pictures'][-1].endswith('attention_stage5_layer0.png')
  saved = json.loads((workdir / 'eval' / f'step_{STEPS}' / 'results.json').read_text())
  assert saved['synthetic_rvos:validation']['mean_IoU'] == pytest.approx(validation['mean_IoU'])


@trained_run
def test_a_damaged_newest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(finished_run, data_dir,
                                                                                      tmp_path, capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  newest = checkpoint_steps(workdir)[-1]
  (workdir / 'checkpoints' / str(newest) / 'state' / '_METADATA').unlink()
  # What a process killed while saving leaves behind: never listed, never restored, removed by the next run.
  unfinished = workdir / 'checkpoints' / f'{newest + EVERY}.orbax-checkpoint-tmp-1796000000'
  shutil.copytree(workdir / 'checkpoints' / str(newest - EVERY), unfinished)
  config = run_config(data_dir, eval_every_steps=newest + 1)
  config.train.num_steps = newest + 2
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=rf'step {newest} in .*checkpoints.*restore_previous_if_damaged'):
    train.train_and_evaluate(config, str(workdir))
  config.model.num_heads = 2
  with pytest.raises(ValueError, match='num_heads=4 there, 2 here'):  # resuming another model is refused
    train.train_and_evaluate(config, str(workdir))
  config.model.num_heads = 4
  config.train.restore_previous_if_damaged = True
  train.train_and_evaluate(config, str(workdir))
  assert f'Resuming from the checkpoint of step {newest - EVERY}' in capsys.readouterr().out
  assert (workdir / 'checkpoints' / f'{newest}.damaged').is_dir() and not unfinished.exists()
  assert (workdir / 'checkpoints' / str(newest) / 'state' / '_METADATA').is_file()  # trained again and saved
  assert checkpoint_steps(workdir)[-1] == newest + 2  # the last step is always saved
  assert (workdir / 'eval' / f'step_{newest + 1}' / 'results.json').is_file()  # the periodic evaluation
  assert (workdir / 'eval' / f'step_{newest + 2}' / 'results.json').is_file()  # the final one


@trained_run
def test_training_can_start_from_a_model_directory_of_the_same_architecture(finished_run, data_dir):
  workdir, _ = finished_run
  config = tiny_config(data_dir)
  config.init.checkpoint = str(workdir / 'export')
  trainer = train.build_trainer(config)
  exported = model_dir.read(workdir / 'export')
  jax.tree.map(np.testing.assert_array_equal, sharding.to_host(trainer.state.params['model']),
               exported.variables['params'])
  assert int(sharding.to_host(trainer.state.step)) == 0  # a new run: fresh optimizer and step
  config.model.num_heads = 2  # same parameter shapes, different model
  with pytest.raises(ValueError, match='num_heads=4 there, 2 here'):
    train.build_trainer(config)


def _final_state(workdir, step):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


@trained_run
def test_export_from_the_latest_checkpoint_round_trips(finished_run, data_dir, tmp_path):
  workdir, _ = finished_run
  config = tiny_config(data_dir)
  output = export.export_model(config, str(workdir), str(tmp_path / 'model'))
  loaded = model_dir.read(output)
  latest = checkpoint_steps(workdir)[-1]
  assert loaded.manifest['step'] == latest and loaded.manifest['input_size'] == [64, 64]
  # The same model with the same variables and word vectors: the same logits.
  assert loaded.model_config == train.model_config(config)
  state = _final_state(workdir, latest)
  jax.tree.map(np.testing.assert_array_equal, loaded.variables,
               {'params': state['params']['model'], 'batch_stats': state['batch_stats']})
  np.testing.assert_array_equal(loaded.table.vectors, state['params']['word_vectors'])

  converted = tiny_config(data_dir)  # a model directory without checkpoints, e.g. a converted official one
  converted.data.train = ''
  converted.init.checkpoint = str(output)
  again = model_dir.read(export.export_model(converted, str(tmp_path / 'elsewhere'), str(tmp_path / 'again')))
  jax.tree.map(np.testing.assert_array_equal, again.variables, loaded.variables)


@trained_run
def test_evaluation_reads_parameters_only(finished_run, data_dir, monkeypatch, capsys):
  """No trainer, no optimizer, no training data: the training set here is one that was never prepared."""
  workdir, results = finished_run
  def refuse(*args, **kwargs):
    raise AssertionError('evaluation must not build the trainer or an optimizer')
  monkeypatch.setattr(train, 'build_trainer', refuse)
  monkeypatch.setattr(train, 'make_optimizer', refuse)
  config = tiny_config(data_dir)
  config.data.train = 'ref_youtube_vos:train'  # no release directory: preparing it would fail
  step = checkpoint_steps(workdir)[-1]
  evaluated = evaluate.evaluate(config, str(workdir))['synthetic_rvos:validation']
  assert f'Evaluating the checkpoint of step {step}' in capsys.readouterr().out
  saved = json.loads((workdir / 'eval' / f'step_{step}' / 'results.json').read_text())
  assert saved['synthetic_rvos:validation']['mean_IoU'] == pytest.approx(evaluated['mean_IoU'])
  if step == STEPS:  # the run's own final evaluation, of the same parameters
    assert evaluated['mean_IoU'] == pytest.approx(results['synthetic_rvos:validation']['mean_IoU'])
  config.model.num_heads = 2
  with pytest.raises(ValueError, match=f'The run in {workdir}.*num_heads=4 there, 2 here'):
    evaluate.evaluate(config, str(workdir))


# Interrupted runs, and an evaluator beside a run: main.py in subprocesses.

def _command(data_dir, workdir, steps, every=10):
  return [sys.executable, 'main.py', '--config=configs/tiny.py', f'--workdir={workdir}', *TRAINER_MODEL_FLAGS,
          f'--config.data.data_dir={data_dir}', f'--config.train.num_steps={steps}',
          f'--config.train.checkpoint_every_steps={every}', '--config.train.log_every_steps=10']


def _start(command, env=None, **kwargs):
  return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                          **kwargs)


def _wait_for(path, process, timeout=300):
  deadline = time.time() + timeout
  while not path.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert path.exists(), f'{path} did not appear (exit status {process.poll()})'


@trained_run
def test_sigterm_and_kill_9_then_resume_is_bit_identical(finished_run, data_dir, tmp_path, capsys):
  """SIGTERM: the step finishes, a checkpoint is saved, exit 0, no step lost; kill -9: the next run resumes from
  the last checkpoint. Either way the final state equals an uninterrupted run's (the module's run), bit for bit.
  The signals go to main.py in subprocesses; the last, resuming run runs here."""
  checkpoints = tmp_path / 'interrupted' / 'checkpoints'
  preempted = _start(_command(data_dir, tmp_path / 'interrupted', STEPS, EVERY), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
  _wait_for(checkpoints / str(EVERY), preempted)
  sent = time.time()
  preempted.send_signal(signal.SIGTERM)
  stdout, stderr = preempted.communicate(timeout=300)
  print(f'SIGTERM to exit: {time.time() - sent:.1f} s')
  assert preempted.returncode == 0, stderr[-3000:]
  stopped = int(re.search(r'Stopped at step (\d+) on SIGTERM', stdout).group(1))
  assert EVERY <= stopped < STEPS - EVERY and (checkpoints / str(stopped)).is_dir()

  next_checkpoint = (stopped // EVERY + 1) * EVERY
  killed = _start(_command(data_dir, tmp_path / 'interrupted', STEPS, EVERY), stdout=subprocess.PIPE,
                  stderr=subprocess.DEVNULL)
  _wait_for(checkpoints / str(next_checkpoint), killed)
  killed.send_signal(signal.SIGKILL)
  killed_out, _ = killed.communicate()
  assert killed.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  assert f'Resuming from the checkpoint of step {stopped}' in killed_out  # no step lost to the SIGTERM
  assert not (checkpoints / str(STEPS)).exists()

  capsys.readouterr()
  train.train_and_evaluate(run_config(data_dir), str(tmp_path / 'interrupted'))
  assert f'Resuming from the checkpoint of step {next_checkpoint}' in capsys.readouterr().out
  expected, actual = _final_state(finished_run[0], STEPS), _final_state(tmp_path / 'interrupted', STEPS)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


@trained_run
def test_an_evaluator_follows_training_until_it_finishes(finished_run, data_dir, tmp_path, capsys):
  """The evaluator reads only what training writes (checkpoints, the run record, training.json): here it runs in a
  thread, and training beside it in this process (with the programs of the module's run)."""
  del finished_run  # compiled what both use
  workdir = tmp_path / 'run'
  config = tiny_config(data_dir)
  config.eval.update(follow=True, follow_poll_seconds=1, follow_timeout_minutes=3)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    follower = pool.submit(evaluate.evaluate, config, str(workdir))
    time.sleep(1)  # following before the first checkpoint appears
    train.train_and_evaluate(tiny_config(data_dir, num_steps=4, checkpoint_every_steps=2), str(workdir))
    follower.result()
  output = capsys.readouterr().out
  assert 'Training has finished at step 4' in output
  for step in (2, 4):
    assert (workdir / 'eval' / f'step_{step}' / 'results.json').is_file()
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir / 'eval'))
  assert json.loads((workdir / 'training.json').read_text()) == {'total_steps': 4, 'finished': True}


# Several devices and processes: tests/train_worker.py.

def run_worker(data_dir, tmp_path, runs, *args, env=None, timeout=900):
  (tmp_path / 'runs.json').write_text(json.dumps(runs))
  result = subprocess.run([sys.executable, 'tests/train_worker.py', f'--data-dir={data_dir}',
                           f'--runs={tmp_path / "runs.json"}', f'--out={tmp_path}', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr[-4000:]
  print(result.stdout)
  return {run['name']: json.loads((tmp_path / f'{run["name"]}.0.json').read_text()) for run in runs}


def assert_same_updates(actual_path, expected_path):
  """The first step's parameter updates agree to rounding; after all steps, within 5% in norm: Adam's second step
  divides by |m| where consecutive gradients nearly cancel, so rounding differences grow by orders of magnitude
  (one vs eight devices, measured: 4e-6 after one step, 2e-3 after two, 1.4% after three)."""
  with np.load(expected_path) as expected, np.load(actual_path) as actual:
    assert set(expected) == set(actual)
    for name in expected:
      if name.startswith('first/'):
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    names = [name for name in expected if name.startswith('all/')]
    difference = np.sqrt(sum(np.sum(np.square(actual[n] - expected[n]), dtype=np.float64) for n in names))
    size = np.sqrt(sum(np.sum(np.square(expected[n]), dtype=np.float64) for n in names))
    assert difference < 0.05 * size, (difference, size)


@pytest.mark.heavy(170)
def test_eight_devices_match_one_without_retracing(data_dir, tmp_path):
  """One process with 8 simulated devices runs the same steps on 1 device and on 8 (parameters and optimizer state
  split over an fsdp axis of 2, the batch over all 8), and with per-device BatchNorm, gradient accumulation and
  bfloat16 together; each step function is traced once (the worker's chex.assert_max_traces). Per-device
  BatchNorm is checked exactly on a toy model. The compiled step's arguments take, per device, what the shardings
  say: the state divided by the fsdp size where it is split, the batch by the device count."""
  # Adam's epsilon is raised so that gradients at rounding-noise level (which the device count legitimately
  # changes) are not blown up into full-size updates of opposite signs: the check is on the sharded computation.
  common = {'adam_eps': 1e-3, 'model': TRAINER_MODEL}
  runs = [{'name': 'toy_per_device', 'toy_per_device': True},
          {'name': 'one', 'devices': 1, 'updates': True, **common},
          # Parameters of 1024 elements and more are sharded (of 65536 in training: the tiny model has none).
          {'name': 'sharded', 'fsdp': 2, 'min_sharded_size': 1024, 'updates': True, **common},
          {'name': 'fsdp8', 'fsdp': 8, 'min_sharded_size': 1024, 'steps': 0, **common},
          # One example per device and microbatch.
          {'name': 'per_device_accumulated_bfloat16', 'devices': 4, 'batch_norm': 'per_device',
           'accumulation_steps': 2, 'dtype': 'bfloat16', 'steps': 2, **common}]
  results = run_worker(data_dir, tmp_path, runs, '--devices=8')
  toy = results['toy_per_device']
  assert toy['devices'] == 8
  assert toy['loss'] == pytest.approx(toy['mean_alone'], rel=1e-6) and toy['stats_difference'] < 1e-6
  assert toy['loss'] != pytest.approx(toy['whole_batch'], rel=1e-3)  # not BatchNorm over the whole batch
  one, sharded, fsdp8 = results['one'], results['sharded'], results['fsdp8']
  assert (one['devices'], sharded['devices']) == (1, 8) and sharded['sharded'] and not one['sharded']
  assert (one['rows_per_device'], sharded['rows_per_device']) == ([8], [1])  # each device its global / 8
  batch_bytes = []
  for run in one, sharded, fsdp8:
    memory = run['argument_bytes']
    # jit drops unused arguments: the trainer's model has no temporal stream to take the frame difference.
    batch_bytes.append(sum(size for name, size in memory['batch'].items() if name != 'frame_difference'))
    if run is not fsdp8:  # fsdp8 is built, not compiled
      assert memory['measured'] == pytest.approx(memory['state'] + batch_bytes[-1], rel=0.01), memory
  assert batch_bytes[0] == 8 * batch_bytes[1] == 8 * batch_bytes[2]
  state_bytes = [run['argument_bytes']['state'] for run in (one, sharded, fsdp8)]
  # Most of the state is split (parameters of 1024 elements and more): it falls nearly as 1/fsdp.
  assert state_bytes[0] / 2 < state_bytes[1] < state_bytes[0] * 0.6 and state_bytes[2] < state_bytes[0] * 0.2, \
      state_bytes
  np.testing.assert_allclose(sharded['losses'], one['losses'], rtol=1e-4)  # 1.7e-5 measured at the third step
  assert_same_updates(tmp_path / 'sharded.npz', tmp_path / 'one.npz')
  mixed = results['per_device_accumulated_bfloat16']
  assert mixed['devices'] == 4 and np.isfinite(mixed['losses']).all() and len(mixed['losses']) == 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.heavy(130)
def test_two_processes_train_together_and_stop_together_when_one_is_preempted(data_dir, tmp_path):
  """Two jax.distributed processes run the training loop (tests/train_worker.py: what main.py runs). Process 1
  starts 35 s late: more than the 30 s in which CPU collectives set up their Gloo context, so the processes must
  meet at coordination-service barriers (as after a slow data preparation or compilation). SIGTERM then reaches
  process 1 only; JAX's preemption sync point stops both after the same step, both save it with the same
  parameters, and one process restores their checkpoint."""
  workdir, coordinator = tmp_path / 'run', f'localhost:{_free_port()}'
  runs = [{'name': 'two', 'batch_size': 4, 'model': TRAINER_MODEL, 'loop': {
      'workdir': str(workdir), 'num_steps': 200, 'checkpoint_every_steps': 100, 'log_every_steps': 10}}]
  (tmp_path / 'runs.json').write_text(json.dumps(runs))
  processes = [_start([sys.executable, 'tests/train_worker.py', f'--data-dir={data_dir}', '--devices=1',
                       f'--runs={tmp_path / "runs.json"}', f'--out={tmp_path}', f'--coordinator={coordinator}',
                       '--num-processes=2', f'--process-id={i}', f'--delay={35 * i}'],
                      env={'XLA_FLAGS': ''}, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  try:
    _wait_for(workdir / 'training.json', processes[0], timeout=600)  # written just before the first step
    time.sleep(1)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=600) for p in processes]
  finally:
    for p in processes:
      p.kill()
  assert [p.returncode for p in processes] == [0, 0], '\n\n'.join(
      f'process {i} (exit {p.returncode}):\n{stderr[-3000:]}'
      for i, (p, (_, stderr)) in enumerate(zip(processes, outputs)))
  stops = [int(re.search(r'Stopped at step (\d+)', out).group(1)) for out, _ in outputs]
  results = [json.loads((tmp_path / f'two.{i}.json').read_text()) for i in range(2)]
  assert [(r['processes'], r['devices']) for r in results] == [(2, 2), (2, 2)]
  assert stops[0] == stops[1] == results[0]['stopped_at_step'] == results[1]['stopped_at_step'] < 200
  assert (workdir / 'checkpoints' / str(stops[0])).is_dir()
  saved = [r['saved'][str(stops[0])] for r in results]
  assert saved[0] == saved[1]  # the same parameters in both processes

  config = tiny_config(data_dir)
  trainer = train.build_trainer(config)
  manager = checkpointing.manager(workdir, config)
  state, step = checkpointing.restore_latest(manager, trainer.state, trainer.state_shardings,
                                             trainer.train_iterator)
  manager.close()
  assert step == stops[0] and int(sharding.to_host(state.step)) == stops[0]
  assert trainer.train_iterator.get_state() != {'epoch': 0, 'batch': 0}  # the data position came back too
  for path, leaf in jax.tree_util.tree_leaves_with_path(sharding.to_host(state.params)):
    name = '/'.join(str(k.key) for k in path)
    np.testing.assert_allclose(np.sum(leaf, dtype=np.float64), saved[0][name], rtol=1e-6, err_msg=name)
