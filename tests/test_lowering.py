"""The programs we send to accelerators, lowered for TPU and CUDA on this CPU-only machine (benchmarks/hlo_ops.py):
the trainer's step with its shardings over 8 simulated devices (data parallel, and FSDP), and the serving
artefact's inference function. No float64, no host callbacks or CPU library calls, bfloat16 where the policy says,
and the collectives the shardings should cost (docs/accelerators.md)."""

import json
import subprocess
import sys

import pytest

from benchmarks import hlo_ops
from configs import tiny
from conftest import ROOT, TRAINER_MODEL

PLATFORMS = ('tpu', 'cuda')
DEVICES = 8
FSDP = 2

# In a subprocess: 8 simulated devices need a jax that has not started (this one has, with one device). The FSDP
# step is compiled, not lowered: its StableHLO is the data-parallel one with other sharding annotations.
MEASURE_STEPS = f'''
import json, sys
import jax
jax.config.update('jax_num_cpu_devices', {DEVICES})
from benchmarks import hlo_ops
from configs import tiny
from lbdt_jax import sharding
config = tiny.get_config()
config.model.update(dtype='bfloat16', **{TRAINER_MODEL!r})
config.train.batch_size = {DEVICES}
sharding.MIN_SHARDED_SIZE = 1024  # the tiny model's arrays are all small: split those of 1024 elements and more
results = {{fsdp: hlo_ops.measure(config, fsdp, platforms, with_inference=False)
            for fsdp, platforms in ((1, {PLATFORMS!r}), ({FSDP}, ()))}}
with open(sys.argv[1], 'w') as f:
  json.dump(results, f)
'''


@pytest.fixture(scope='module')
def training_steps(tmp_path_factory):
  """{fsdp: hlo_ops.measure(...)} of the bfloat16 training step of the trainer's tiny model on 8 devices: lowered
  for TPU and CUDA (data parallel), compiled for the CPU devices (data parallel and FSDP)."""
  out = tmp_path_factory.mktemp('lowering') / 'steps.json'
  result = subprocess.run([sys.executable, '-c', MEASURE_STEPS, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return {int(fsdp): measured for fsdp, measured in json.loads(out.read_text()).items()}


steps = pytest.mark.xdist_group('lowered_training_steps')


@steps
@pytest.mark.heavy(60)
def test_the_training_step_lowers_with_nothing_host_bound_and_bfloat16_compute(training_steps):
  measured = training_steps[1]
  assert (measured['platforms'], measured['devices'], measured['fsdp']) == (list(PLATFORMS), DEVICES, 1)
  counts = measured['training_step']
  assert counts['portability_problems'] == [] and 'f64' not in counts['element_types']
  assert counts['policy_problems'] == []  # float32 dots only in the LSTM, the BCA gates and the upsampling
  assert list(counts['convolution']) == ['bf16'] and counts['convolution']['bf16'] > 0
  assert counts['dot_general']['bf16'] > counts['dot_general']['f32'] > 0


@steps
def test_data_parallel_steps_all_reduce_the_gradients_and_nothing_else(training_steps):
  """Every gradient is summed over the devices (all-reduces of the model's parameters, the word table's, the
  BatchNorm statistics of the global batch and the loss terms); nothing is gathered and no activation is exchanged
  (a collective-permute or all-to-all would mean a spatial dimension got split)."""
  measured = training_steps[1]
  collectives, parameters = measured['partitioned_collectives'], measured['parameter_bytes']
  assert collectives['all_reduce']['count'] > 0
  # The frozen word table's gradient is reduced too: train_step differentiates every parameter. (This model has one
  # stream, so no LBDT weights serve two directions: XLA:CPU reduces those once per use, docs/accelerators.md.)
  assert sum(parameters.values()) <= collectives['all_reduce']['bytes'] <= 1.05 * sum(parameters.values())
  # One in the LSTM's backward loop (its recurrent kernel's gradient, at every word): XLA:CPU leaves it there,
  # XLA:GPU's collective optimisations sink such accumulated all-reduces out of loops.
  assert collectives['all_reduce']['in_loops'] == 1
  for name in ('all_gather', 'reduce_scatter', 'collective_permute', 'all_to_all'):
    assert collectives[name]['count'] == 0, (name, collectives)


@steps
def test_fsdp_steps_gather_the_split_parameters(training_steps):
  """With the state split over `fsdp` devices, the step gathers the split parameters once, before the forward pass
  (`sharding.gather_parameters`): at most the parameters' bytes, none inside the LSTM's loop, and activations keep
  the batch's sharding (no all-to-all or collective-permute reshuffles them)."""
  fsdp = training_steps[FSDP]['partitioned_collectives']
  parameters = training_steps[FSDP]['parameter_bytes']
  # Split parameters are gathered whole once each: at least half the model, at most everything (word table too).
  assert parameters['model'] / 2 <= fsdp['all_gather']['bytes'] <= sum(parameters.values()), (fsdp, parameters)
  assert fsdp['all_gather']['in_loops'] == 0, fsdp
  assert fsdp['all_to_all']['count'] == 0 and fsdp['collective_permute']['count'] == 0, fsdp


@pytest.fixture(scope='module')
def inference_program():
  """The ops of the tiny model's bfloat16 inference function as the serving artefact exports it, for TPU and CUDA."""
  config = tiny.get_config()
  config.model.dtype = 'bfloat16'
  return hlo_ops.inference_operations(config, PLATFORMS)


@pytest.mark.heavy(15)
def test_the_inference_function_lowers_with_nothing_host_bound_and_bfloat16_compute(inference_program):
  assert hlo_ops.portability_problems(inference_program) == []
  assert hlo_ops.policy_problems(inference_program) == []
  counts = hlo_ops.op_counts(inference_program)
  assert list(counts['convolution']) == ['bf16'] and 'f64' not in counts['element_types']


def test_inference_attention_is_xla_attention_in_bfloat16(inference_program):
  """At inference the attention goes through jax.nn.dot_product_attention with its default implementation: XLA's
  dots and softmax on every platform (jax 0.10), not cuDNN's fused kernel, which would take implementation='cudnn'
  on CUDA (docs/accelerators.md). Its dots take bfloat16 operands; the logits accumulate in float32."""
  attention = [op for op in inference_program if op.name == 'dot_general' and 'attention' in op.scope]
  assert attention and all(op.operand_types == ('bf16', 'bf16') for op in attention)
  assert {t for op in attention for t in op.result_types} == {'bf16', 'f32'}
  assert not any(op.target.startswith('__cudnn') for op in inference_program)


# A module with what the checks look for, as StableHLO text: they must find each of them.
PROBLEMS = '''
func.func @main(%x: tensor<2x4xf64>, %image: tensor<1x8x8x3xf32>, %kernel: tensor<3x3x3x4xf32>,
                %words: tensor<2x4xf32>, %weights: tensor<4x4xf32>) -> tensor<2x4xf64> {
  %sum = stablehlo.add %x, %x : tensor<2x4xf64> loc("jit(f)/lbdt_stage5/add")
  %conv = stablehlo.convolution(%image, %kernel) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f],
      window = {stride = [1, 1], pad = [[1, 1], [1, 1]]} {batch_group_count = 1 : i64, feature_group_count = 1 : i64}
      : (tensor<1x8x8x3xf32>, tensor<3x3x3x4xf32>) -> tensor<1x8x8x4xf32> loc("jit(f)/decoder/tower0/conv/conv")
  %lstm = stablehlo.dot_general %words, %weights, contracting_dims = [1] x [0]
      : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
      loc("jit(f)/text_encoder/dot_general"("TextEncoder.__call__"))
  %host = stablehlo.custom_call @xla_ffi_python_cpu_callback(%words) : (tensor<2x4xf32>) -> tensor<2x4xf32>
      loc("jit(f)/pure_callback")
  return %sum : tensor<2x4xf64>
}
'''

PARTITIONED = '''
ENTRY %main (p0: f32[4,8], p1: bf16[2,16]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = bf16[2,16]{1,0} parameter(1)
  %all-reduce = f32[4,8]{1,0} all-reduce(f32[4,8]{1,0} %p0), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %all-gather.1 = bf16[4,16]{1,0} all-gather(%p1), dimensions={0}, metadata={op_name="jit(f)/while/body/dot_general"}
  %scatter = (f32[2,8]{1,0}, bf16[1,16]{1,0}) reduce-scatter(f32[4,8]{1,0} %p0, bf16[2,16]{1,0} %p1), dimensions={0}
  ROOT %collective-permute = f32[4,8]{1,0} collective-permute(%all-reduce), source_target_pairs={{0,1}}
}
'''


def test_the_checks_find_float64_host_calls_and_float32_outside_the_policy():
  ops = hlo_ops.operations(PROBLEMS)
  assert hlo_ops.portability_problems(ops) == [
      'float64 add at jit(f)/lbdt_stage5/add', 'custom call xla_ffi_python_cpu_callback at jit(f)/pure_callback']
  # The LSTM's float32 dot is the policy's; the decoder's float32 convolution is not.
  assert hlo_ops.policy_problems(ops) == ['float32 convolution at jit(f)/decoder/tower0/conv/conv']
  counts = hlo_ops.op_counts(ops)
  assert counts['convolution'] == {'f32': 1} and counts['dot_general'] == {'f32': 1}
  assert counts['custom_call'] == {'xla_ffi_python_cpu_callback': 1} and 'f64' in counts['element_types']
  assert hlo_ops.collective_counts(PARTITIONED) == {
      'all_reduce': {'count': 1, 'bytes': 128, 'in_loops': 0}, 'all_gather': {'count': 1, 'bytes': 128, 'in_loops': 1},
      'reduce_scatter': {'count': 1, 'bytes': 96, 'in_loops': 0},
      'collective_permute': {'count': 1, 'bytes': 128, 'in_loops': 0},
      'all_to_all': {'count': 0, 'bytes': 0, 'in_loops': 0}}
