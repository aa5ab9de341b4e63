"""The trainer on the tiny config: outputs, resumption (also after kill -9), NaN handling, devices and processes."""

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
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from configs import tiny
from lbdt_jax import checkpointing, evaluate, export, model_dir, sharding, train
from lbdt_jax.models import LBDT


def tiny_config(data_dir, **train_overrides):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = tiny_config(data_dir)
  config.eval.update(pictures=4, attention_maps=True)
  results = train.train_and_evaluate(config, str(workdir))
  return workdir, results


def test_run_writes_checkpoints_export_logs_and_results(finished_run):
  workdir, results = finished_run
  assert sorted(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit()) == [2, 4, 6]
  for name in ('model_config.json', 'word_table.npz', 'config.json'):
    assert (workdir / 'export' / name).is_file()
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  validation = results['synthetic_rvos:validation']
  assert validation['num_samples'] > 0 and 0.0 <= validation['mean_IoU'] <= 1.0
  assert set(validation['per_cue']) <= {'appearance', 'motion', 'both'} and validation['per_cue']
  assert 'coco_mAP' in validation
  for picture in ('predictions.png', 'clip.gif', 'attention_stage5_layer0.png'):
    assert (workdir / 'pictures' / picture).is_file()
  assert results['pictures'][-1].endswith('attention_stage5_layer0.png')
  saved = json.loads((workdir / 'eval' / 'step_6' / 'results.json').read_text())
  assert saved['synthetic_rvos:validation']['mean_IoU'] == pytest.approx(validation['mean_IoU'])


def test_rerun_resumes_from_the_last_checkpoint(finished_run, data_dir, capsys):
  workdir, _ = finished_run
  train.train_and_evaluate(tiny_config(data_dir, num_steps=8, eval_every_steps=7), str(workdir))
  assert 'Resuming from the checkpoint of step 6' in capsys.readouterr().out
  assert 8 in {int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit()}
  assert (workdir / 'eval' / 'step_7' / 'results.json').is_file()  # the periodic evaluation
  assert (workdir / 'eval' / 'step_8' / 'results.json').is_file()  # the final one


def _command(data_dir, workdir, steps):
  return [sys.executable, 'main.py', '--config=configs/tiny.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.train.num_steps={steps}',
          '--config.train.checkpoint_every_steps=20', '--config.train.log_every_steps=10']


def _final_state(workdir, step):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _wait_for(path, process, timeout=300):
  deadline = time.time() + timeout
  while not path.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert path.exists(), f'{path} did not appear (exit status {process.poll()})'


@pytest.mark.heavy
def test_sigterm_and_kill_9_then_resume_is_bit_identical(data_dir, tmp_path):
  """SIGTERM: the step finishes, a checkpoint is saved, exit 0, no step lost; kill -9: the next run resumes from
  the last checkpoint. Either way the final state equals an uninterrupted run's, bit for bit."""
  steps = 80
  straight = subprocess.run(_command(data_dir, tmp_path / 'straight', steps), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  checkpoints = tmp_path / 'interrupted' / 'checkpoints'

  preempted = subprocess.Popen(_command(data_dir, tmp_path / 'interrupted', steps), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(checkpoints / '20', preempted)
  sent = time.time()
  preempted.send_signal(signal.SIGTERM)
  stdout, stderr = preempted.communicate(timeout=300)
  print(f'SIGTERM to exit: {time.time() - sent:.1f} s')
  assert preempted.returncode == 0, stderr[-3000:]
  stopped = int(re.search(r'Stopped at step (\d+) on SIGTERM', stdout).group(1))
  assert 20 <= stopped < 60 and (checkpoints / str(stopped)).is_dir()

  next_checkpoint = (stopped // 20 + 1) * 20
  killed = subprocess.Popen(_command(data_dir, tmp_path / 'interrupted', steps), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  _wait_for(checkpoints / str(next_checkpoint), killed)
  killed.send_signal(signal.SIGKILL)
  killed_out, _ = killed.communicate()
  assert killed.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  assert f'Resuming from the checkpoint of step {stopped}' in killed_out  # no step lost to the SIGTERM
  assert not (checkpoints / str(steps)).exists()

  resumed = subprocess.run(_command(data_dir, tmp_path / 'interrupted', steps), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from the checkpoint of step {next_checkpoint}' in resumed.stdout
  expected, actual = _final_state(tmp_path / 'straight', steps), _final_state(tmp_path / 'interrupted', steps)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_nonfinite_updates_are_skipped_and_counted(data_dir):
  trainer = train.build_trainer(tiny_config(data_dir))
  batch = {k: v for k, v in next(trainer.train_iterator).items() if k in train.MODEL_INPUTS}
  batch['frame'] = batch['frame'].copy()
  batch['frame'][0, 0, 0, 0] = np.nan
  before = sharding.to_host(trainer.state)
  state, metrics = trainer.step_fn(trainer.state, sharding.global_batch(batch, trainer.mesh))
  after = sharding.to_host(state)
  jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
  jax.tree.map(np.testing.assert_array_equal, after.batch_stats, before.batch_stats)
  assert (after.step, after.nonfinite_in_row, after.nonfinite_total) == (1, 1, 1)
  assert float(metrics['skipped_update']) == 1.0
  config = tiny_config(data_dir, max_nonfinite_in_row=3)
  train._check_finite(metrics['nonfinite_in_row'], config, 1)  # one in a row: only a warning
  with pytest.raises(train.NonFiniteError, match='3 consecutive steps'):
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


def run_worker(data_dir, *args, env=None, timeout=600):
  result = subprocess.run([sys.executable, 'tests/train_worker.py', f'--data-dir={data_dir}', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


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


@pytest.mark.heavy
def test_eight_devices_match_one_without_recompiling(data_dir, tmp_path):
  # Adam's epsilon is raised so that gradients at rounding-noise level (which the device count legitimately
  # changes) are not blown up into full-size updates of opposite signs: the check is on the sharded computation.
  common = ('--adam-eps=1e-3',)
  one = run_worker(data_dir, '--devices=1', f'--params-out={tmp_path / "one.npz"}', *common)
  eight = run_worker(data_dir, '--devices=8', f'--params-out={tmp_path / "eight.npz"}', *common)
  assert eight['devices'] == 8 and eight['compilations'] == 1 and one['compilations'] == 1
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-4)  # 1.7e-5 measured at the third step
  assert_same_updates(tmp_path / 'eight.npz', tmp_path / 'one.npz')
  sharded = run_worker(data_dir, '--devices=8', '--model-axis=2', f'--params-out={tmp_path / "sharded.npz"}', *common)
  np.testing.assert_allclose(sharded['losses'], one['losses'], rtol=1e-4)  # parameters over a 'model' axis too
  assert_same_updates(tmp_path / 'sharded.npz', tmp_path / 'one.npz')
  per_device = run_worker(data_dir, '--devices=8', '--batch-norm=per_device', *common)
  assert np.isfinite(per_device['losses']).all()
  assert per_device['losses'][0] != pytest.approx(one['losses'][0], rel=1e-6)  # BN over 1 example, not 8


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.heavy
def test_two_processes_match_one_and_their_checkpoint_restores_in_one(data_dir, tmp_path):
  env = {**os.environ, 'XLA_FLAGS': ''}
  coordinator = f'localhost:{_free_port()}'
  # Process 1 starts 35 s late: more than the 30 s in which CPU collectives set up their Gloo context, so the
  # processes must meet at coordination-service barriers (as after a slow data preparation or compilation).
  workers = [subprocess.Popen([sys.executable, 'tests/train_worker.py', f'--data-dir={data_dir}', '--devices=2',
                               f'--coordinator={coordinator}', '--num-processes=2', f'--process-id={i}',
                               f'--workdir={tmp_path / "run"}', '--adam-eps=1e-3', f'--delay={35 * i}'],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  outputs = [w.communicate(timeout=900) for w in workers]
  assert [w.returncode for w in workers] == [0, 0], '\n\n'.join(
      f'process {i} (exit {w.returncode}):\n{stderr[-3000:]}' for i, (w, (_, stderr)) in enumerate(zip(workers, outputs)))
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert results[0]['processes'] == 2 and results[0]['devices'] == 4
  assert [r['compilations'] for r in results] == [1, 1]  # compiled ahead, then called without compiling again
  # The same four devices in one process: the same partitioning, so only the collectives' summation order differs.
  single = run_worker(data_dir, '--devices=4', '--adam-eps=1e-3', env=env)
  np.testing.assert_allclose(results[0]['losses'], single['losses'], rtol=1e-5)

  config = tiny_config(data_dir)
  trainer = train.build_trainer(config)
  manager = checkpointing.manager(tmp_path / 'run', config)
  state, step = checkpointing.restore_latest(manager, trainer.state, trainer.state_shardings,
                                             trainer.train_iterator)
  manager.close()
  assert step == 3 and int(sharding.to_host(state.step)) == 3
  restored = sharding.to_host(state.params)
  for path, leaf in jax.tree_util.tree_leaves_with_path(restored):
    name = '/'.join(str(k.key) for k in path)
    np.testing.assert_allclose(np.sum(np.asarray(leaf, np.float64)), results[0]['params'][name], rtol=1e-6)


def test_accumulation_and_bfloat16_train(data_dir):
  result = run_worker(data_dir, '--devices=2', '--accumulation-steps=2', '--dtype=bfloat16', '--steps=2')
  assert np.isfinite(result['losses']).all() and result['compilations'] == 1


def test_training_can_start_from_a_model_directory(finished_run, data_dir):
  workdir, _ = finished_run
  config = tiny_config(data_dir)
  config.init.checkpoint = str(workdir / 'export')
  trainer = train.build_trainer(config)
  exported = model_dir.read(workdir / 'export')
  jax.tree.map(np.testing.assert_array_equal, sharding.to_host(trainer.state.params['model']),
               exported.variables['params'])
  assert int(sharding.to_host(trainer.state.step)) == 0  # a new run: fresh optimizer and step


def test_export_from_the_latest_checkpoint_round_trips(finished_run, data_dir, tmp_path):
  workdir, _ = finished_run
  config = tiny_config(data_dir)
  output = export.export_model(config, str(workdir), str(tmp_path / 'model'))
  loaded = model_dir.read(output)
  latest = max(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())
  assert loaded.manifest['step'] == latest and loaded.manifest['input_size'] == [64, 64]
  state = _final_state(workdir, latest)
  rng = np.random.default_rng(1)
  frame = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  ids = rng.integers(0, len(loaded.table.words), (2, 6)).astype(np.int32)
  words_expected = np.asarray(state['params']['word_vectors'])[ids] * (ids != 0)[..., None]
  words_actual = loaded.table.vectors[ids] * (ids != 0)[..., None]
  model = LBDT(loaded.model_config)
  # Both on one device: the same values on differently sharded arrays may run through differently fused programs.
  expected = model.apply(jax.device_put({'params': state['params']['model'], 'batch_stats': state['batch_stats']}),
                         frame, np.abs(frame), words_expected, np.ones((2, 6), np.int32))
  actual = model.apply(loaded.variables, frame, np.abs(frame), words_actual, np.ones((2, 6), np.int32))
  np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))

  converted = tiny_config(data_dir)  # a model directory without checkpoints, e.g. a converted official one
  converted.data.train = ''
  converted.init.checkpoint = str(output)
  again = model_dir.read(export.export_model(converted, str(tmp_path / 'elsewhere'), str(tmp_path / 'again')))
  jax.tree.map(np.testing.assert_array_equal, again.variables, loaded.variables)


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


def test_a_model_directory_of_another_architecture_is_refused(finished_run, data_dir):
  workdir, _ = finished_run
  config = tiny_config(data_dir)
  config.model.num_heads = 2  # same parameter shapes, different model
  config.init.checkpoint = str(workdir / 'export')
  with pytest.raises(ValueError, match='num_heads=4 there, 2 here'):
    train.build_trainer(config)


def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_can_be_used(finished_run, data_dir, tmp_path,
                                                                           capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  newest = max(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())
  (workdir / 'checkpoints' / str(newest) / 'state' / '_METADATA').unlink()
  # What a process killed while saving leaves behind: never listed, never restored, removed by the next run.
  unfinished = workdir / 'checkpoints' / f'{newest + 2}.orbax-checkpoint-tmp-1796000000'
  shutil.copytree(workdir / 'checkpoints' / str(newest - 2), unfinished)
  config = tiny_config(data_dir, num_steps=newest)
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=rf'step {newest} in .*checkpoints.*restore_previous_if_damaged'):
    train.train_and_evaluate(config, str(workdir))
  config.model.num_heads = 2
  with pytest.raises(ValueError, match='num_heads=4 there, 2 here'):  # resuming another model is refused
    train.train_and_evaluate(config, str(workdir))
  config.model.num_heads = 4
  config.train.restore_previous_if_damaged = True
  train.train_and_evaluate(config, str(workdir))
  output = capsys.readouterr().out
  assert f'Resuming from the checkpoint of step {newest - 2}' in output
  assert (workdir / 'checkpoints' / f'{newest}.damaged').is_dir() and not unfinished.exists()
  assert (workdir / 'checkpoints' / str(newest) / 'state' / '_METADATA').is_file()  # trained again and saved


def test_evaluation_reads_parameters_only(finished_run, data_dir, monkeypatch, capsys):
  """No trainer, no optimizer, no training data: the training set here is one that was never prepared."""
  workdir, results = finished_run
  def refuse(*args, **kwargs):
    raise AssertionError('evaluation must not build the trainer or an optimizer')
  monkeypatch.setattr(train, 'build_trainer', refuse)
  monkeypatch.setattr(train, 'make_optimizer', refuse)
  config = tiny_config(data_dir)
  config.data.train = 'ref_youtube_vos:train'  # no release directory: preparing it would fail
  step = max(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())
  evaluated = evaluate.evaluate(config, str(workdir))['synthetic_rvos:validation']
  assert f'Evaluating the checkpoint of step {step}' in capsys.readouterr().out
  saved = json.loads((workdir / 'eval' / f'step_{step}' / 'results.json').read_text())
  assert saved['synthetic_rvos:validation']['mean_IoU'] == pytest.approx(evaluated['mean_IoU'])
  config.model.num_heads = 2
  with pytest.raises(ValueError, match=f'The run in {workdir}.*num_heads=4 there, 2 here'):
    evaluate.evaluate(config, str(workdir))


@pytest.mark.heavy
def test_an_evaluator_follows_training_until_it_finishes(data_dir, tmp_path, capsys):
  workdir = tmp_path / 'run'
  training = subprocess.Popen(_command(data_dir, workdir, 6)[:-2] + ['--config.train.checkpoint_every_steps=2'],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    config = tiny_config(data_dir)
    config.eval.update(follow=True, follow_poll_seconds=1, follow_timeout_minutes=10)
    evaluate.evaluate(config, str(workdir))
  finally:
    _, stderr = training.communicate(timeout=600)
  assert training.returncode == 0, stderr[-3000:]
  output = capsys.readouterr().out
  assert 'Training has finished at step 6' in output
  for step in (2, 4, 6):
    assert (workdir / 'eval' / f'step_{step}' / 'results.json').is_file()
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir / 'eval'))
  assert json.loads((workdir / 'training.json').read_text()) == {'total_steps': 6, 'finished': True}


@pytest.mark.heavy
def test_two_processes_stop_together_when_one_is_preempted(data_dir, tmp_path):
  """SIGTERM reaches process 1 only; JAX's preemption sync point stops both after the same step, both save it."""
  workdir, coordinator = tmp_path / 'run', f'localhost:{_free_port()}'
  command = _command(data_dir, workdir, 400)
  env = {**os.environ, 'XLA_FLAGS': ''}
  processes = [subprocess.Popen(command + [f'--coordinator={coordinator}', '--num_processes=2', f'--process_id={i}'],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  try:
    _wait_for(workdir / 'training.json', processes[0], timeout=600)  # written just before the first step
    time.sleep(5)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=600) for p in processes]
  finally:
    for p in processes:
      p.kill()
  assert [p.returncode for p in processes] == [0, 0], '\n\n'.join(err[-3000:] for _, err in outputs)
  stops = [int(re.search(r'Stopped at step (\d+)', out).group(1)) for out, _ in outputs]
  assert stops[0] == stops[1] < 400 and (workdir / 'checkpoints' / str(stops[0])).is_dir()
  resumed = subprocess.run(_command(data_dir, workdir, stops[0] + 2), cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from the checkpoint of step {stops[0]}' in resumed.stdout
