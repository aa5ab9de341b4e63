"""Prediction, model directories, checkpoints, metrics and the word tables load without TensorFlow.

Each check imports the modules in a fresh interpreter (the test process itself has long imported TensorFlow) and
lists the TensorFlow modules that the imports loaded. To find who imports it: `python -X importtime -c 'import M'`.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The top-level names that count as TensorFlow.
TENSORFLOW = ('tensorflow', 'tensorflow_datasets', 'tf_keras')

LOADED_TENSORFLOW = f'''
import importlib, json, sys
for name in sys.argv[1:]:
  importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {TENSORFLOW!r})))
'''


def loaded_tensorflow_modules(*modules: str) -> list[str]:
  """The TensorFlow modules in `sys.modules` after importing `modules` in a new Python process."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
             TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', LOADED_TENSORFLOW, *modules], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, f'importing {modules} failed:\n{result.stderr[-3000:]}'
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('modules', [
    ('lbdt_jax.predict',),  # with visualize, inference, model_dir, paths and the models
    ('lbdt_jax.model_dir',),
    ('lbdt_jax.metrics',),
    ('lbdt_jax.tools.score',),  # scoring any method's folders needs no TensorFlow
    ('data_pipeline', 'data_pipeline.glove', 'data_pipeline.tokenizer', 'data_pipeline.normalisation'),
    ('lbdt_jax.checkpointing',),
], ids=lambda modules: '+'.join(modules))
def test_imports_without_tensorflow(modules):
  assert loaded_tensorflow_modules(*modules) == [], f'importing {", ".join(modules)} loads TensorFlow'


def test_the_check_sees_tensorflow():
  # The input pipeline does use TensorFlow: were this empty, the checks above would pass whatever happens.
  assert 'tensorflow' in loaded_tensorflow_modules('data_pipeline.input_pipeline')
