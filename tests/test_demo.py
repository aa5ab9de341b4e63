"""The quick-start command end to end, on the tiny config."""

import json
import subprocess
import sys

from conftest import ROOT


def test_demo_runs_and_learns(tmp_path):
  result = subprocess.run([sys.executable, 'main.py', '--config=configs/tiny.py', '--config.demo.steps=8',
                           '--config.demo.learning_rate=3e-3', f'--workdir={tmp_path}',
                           f'--config.data.data_dir={tmp_path / "tfds"}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'parameters:' in result.stdout and 'pixel accuracy' in result.stdout
  summary = json.loads((tmp_path / 'demo.json').read_text())
  assert summary['logits_shape'] == [2, 64, 64]
  assert summary['loss_last'] < summary['loss_first']


def test_bad_config_value_is_reported(tmp_path):
  result = subprocess.run([sys.executable, 'main.py', '--config=configs/tiny.py', '--config.model.bridge=words',
                           f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and "bridge='words'" in result.stderr
