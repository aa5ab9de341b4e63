"""What the programs we send to accelerators are made of: op counts of the training step and of the inference
function, lowered for TPU or CUDA on any machine (nothing is compiled for the accelerator).

  python -m benchmarks.hlo_ops [--layers 4] [--size 320] [--dtype bfloat16] [--devices 8] [--fsdp N]
                               [--platform tpu|cuda] [--json OUT]

The training step is the trainer's own (`lbdt_jax.train.create_state_and_step`, global batch = --devices, state
and batch sharded over `--devices` simulated CPU devices as `lbdt_jax.sharding` decides), the inference function
the serving artefact's (`lbdt_jax.inference.export_probabilities`, symbolic batch). From their StableHLO:
convolutions and dots by operand element type, custom calls by target, and whether anything would not run on the
platform (float64, host callbacks, CPU library calls) or breaks the bfloat16 policy (a float32 convolution or dot
outside the parts that `lbdt_jax.models.layers.stats_dtype` keeps in float32).

The collectives that the shardings need (gradient all-reduces; FSDP's all-gathers and reduce-scatters) are not in
the StableHLO: XLA's SPMD partitioner adds them when it compiles. They are counted in the training step compiled for
the simulated CPU devices: the partitioner is the one every backend runs; TPU and GPU then combine and overlap
collectives (fewer ops, the same bytes). Counts are static: an op inside a loop or a branch counts once (those in
loops are counted apart too). Bytes are those of the results per device: the buffer an all-reduce sums, the one an
all-gather assembles, a device's share of a reduce-scatter.
"""

import argparse
import collections
import dataclasses
import re

import jax
import numpy as np
from jax.extend.mlir import ir
from jax.interpreters import mlir

from benchmarks import harness, throughput
from data_pipeline import glove
from lbdt_jax import inference, metrics, model_dir, sharding, train
from lbdt_jax.models import LBDT

# Custom calls that run on any platform: sharding annotations and the shape checks of symbolic shapes. Anything
# else (a host callback such as xla_ffi_python_cpu_callback, a LAPACK or DUCC kernel of XLA:CPU) is reported.
PORTABLE_CUSTOM_CALLS = frozenset({'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape', 'shape_assertion'})
# Where the bfloat16 policy computes in float32 (lbdt_jax/models/layers.py `stats_dtype`), as parts of the lowered
# ops' scopes (`_scope`): the LSTM, the BCA gates (tiny matmuls that scale whole channels), and the decoder's
# upsampling of its float32 (BatchNorm output) feature maps. A float32 convolution or dot elsewhere breaks the policy.
FLOAT32_BY_POLICY = ('TextEncoder.__call__', '_denoiser/', '_activator/', 'consistency/', 'aligned_bilinear')
# The collectives are counted in a CPU compilation, whose code generation is most of its time and decides nothing
# about them: generated plainly (measured: the same collectives, a fifth of the time).
PARTITIONING_ONLY = {'xla_cpu_use_fusion_emitters': False, 'xla_backend_optimization_level': 0,
                     'xla_llvm_disable_expensive_passes': True}
STEPS_PER_EPOCH = 1000  # only places the learning-rate decay boundaries
COMPUTE_OPS = ('convolution', 'dot_general')
COLLECTIVES = ('all_reduce', 'all_gather', 'reduce_scatter', 'collective_permute', 'all_to_all')
_ELEMENT_BYTES = {'pred': 1, 'i1': 1, 's8': 1, 'u8': 1, 'i8': 1, 'ui8': 1, 's16': 2, 'u16': 2, 'i16': 2, 'f16': 2,
                  'bf16': 2, 's32': 4, 'u32': 4, 'i32': 4, 'ui32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'i64': 8,
                  'f64': 8, 'c64': 8, 'c128': 16}


@dataclasses.dataclass(frozen=True)
class Op:
  """One StableHLO operation: its name without the dialect, element types and byte sizes of its operands and
  results, the custom call target ('' for other ops) and its scope (the name stack of its location)."""
  name: str
  operand_types: tuple[str, ...]
  result_types: tuple[str, ...]
  operand_bytes: int
  result_bytes: int
  target: str
  scope: str


def _element_type_and_bytes(value_type) -> tuple[str, int]:
  try:
    shaped = ir.ShapedType(value_type)
  except ValueError:  # tokens, tuples
    return str(value_type), 0
  element = str(shaped.element_type)
  # A symbolic (batch) dimension counts as 1: the bytes of one example.
  return element, _ELEMENT_BYTES.get(element, 0) * _product(
      1 if ir.ShapedType.is_dynamic_size(dim) else dim for dim in shaped.shape)


def _product(values) -> int:
  result = 1
  for value in values:
    result *= value
  return result


def _scope(location) -> str:
  """The name stack of an op's location (`jit(f)/jvp(LBDT)/text_encoder/dot_general`, restarted inside a loop's
  body) followed by the Python functions it was traced in, innermost first (`aligned_bilinear Decoder.__call__`)."""
  return ' '.join(name for name in re.findall(r'"([^"]*)"', str(location)) if not name.endswith('.py'))


def _walk(operation):
  yield operation
  for region in operation.regions:
    for block in region:
      for op in block:
        yield from _walk(op.operation)


def operations(module) -> list[Op]:
  """The operations of a StableHLO module (an `ir.Module`, e.g. `Lowered.compiler_ir('stablehlo')`, or its text, e.g.
  `Exported.mlir_module()`)."""
  if isinstance(module, str):
    module = ir.Module.parse(module, context=mlir.make_ir_context())
  found = []
  for operation in _walk(module.operation):
    dialect, _, name = operation.name.partition('.')
    if dialect != 'stablehlo':
      continue
    operands = [_element_type_and_bytes(value.type) for value in operation.operands]
    results = [_element_type_and_bytes(value.type) for value in operation.results]
    target = ir.StringAttr(operation.attributes['call_target_name']).value if name == 'custom_call' else ''
    found.append(Op(name, tuple(t for t, _ in operands), tuple(t for t, _ in results),
                    sum(b for _, b in operands), sum(b for _, b in results), target, _scope(operation.location)))
  return found


def _operand_key(op: Op) -> str:
  return '+'.join(sorted(set(op.operand_types)))


def op_counts(ops: list[Op]) -> dict:
  """{'convolution' | 'dot_general': {operand element type: count}, 'custom_call': {target: count},
  collective: {'count', 'bytes'} (those written into the program, e.g. by shard_map), 'element_types': [...]}."""
  counts = {name: collections.Counter() for name in COMPUTE_OPS}
  custom_calls = collections.Counter()
  collectives = {name: {'count': 0, 'bytes': 0} for name in COLLECTIVES}
  element_types = set()
  for op in ops:
    element_types.update(op.operand_types + op.result_types)
    if op.name in counts:
      counts[op.name][_operand_key(op)] += 1
    elif op.name == 'custom_call':
      custom_calls[op.target] += 1
    elif op.name in collectives:
      collectives[op.name]['count'] += 1
      collectives[op.name]['bytes'] += max(op.operand_bytes, op.result_bytes)
  return {**{name: dict(sorted(counter.items())) for name, counter in counts.items()},
          'custom_call': dict(sorted(custom_calls.items())), **collectives, 'element_types': sorted(element_types)}


def portability_problems(ops: list[Op]) -> list[str]:
  """What would keep a program from running as intended on an accelerator: float64 values (emulated or refused on
  TPU, slow on GPUs) and custom calls that are not platform-neutral (host callbacks, CPU library kernels)."""
  problems = []
  for op in ops:
    if any(t in ('f64', 'complex<f64>') for t in op.operand_types + op.result_types):
      problems.append(f'float64 {op.name} at {op.scope}')
    if op.name == 'custom_call' and op.target not in PORTABLE_CUSTOM_CALLS:
      problems.append(f'custom call {op.target} at {op.scope}')
  return problems


def policy_problems(ops: list[Op]) -> list[str]:
  """float32 convolutions and dots outside the parts the bfloat16 policy keeps in float32 (for a bfloat16 program)."""
  return [f'float32 {op.name} at {op.scope}' for op in ops
          if op.name in COMPUTE_OPS and 'f32' in op.operand_types
          and not any(part in op.scope for part in FLOAT32_BY_POLICY)]


_HLO_SHAPE = re.compile(r'\b(pred|bf16|[fsuc]\d+)\[([\d,]*)\]')
# `%name = <result shape or (tuple)> <opcode>(<operands>), ..., metadata={op_name="<name stack>" ...}`, one a line.
_HLO_COLLECTIVE = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*(?P<results>\([^)]*\)|\S+)\s+'
                             r'(?P<opcode>all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)\('
                             r'(?P<rest>.*)$', re.MULTILINE)


def collective_counts(hlo_text: str) -> dict:
  """{collective: {'count', 'bytes', 'in_loops'}} of a compiled (partitioned) HLO module's text: bytes of the
  results per device (an all-gather's gathered buffer, a reduce-scatter's share); `in_loops` of them are traced
  inside a loop (their name stack has a `while`), so run once per iteration."""
  counts = {name: {'count': 0, 'bytes': 0, 'in_loops': 0} for name in COLLECTIVES}
  for match in _HLO_COLLECTIVE.finditer(hlo_text):
    entry = counts[match['opcode'].replace('-', '_')]
    entry['count'] += 1
    entry['bytes'] += sum(_ELEMENT_BYTES[element] * _product(int(d) for d in dims.split(',') if d)
                          for element, dims in _HLO_SHAPE.findall(match['results']))
    entry['in_loops'] += bool(re.search(r'op_name="[^"]*/while/', match['rest']))
  return counts


def word_table(config) -> glove.WordTable:
  """A frozen table (as GloVe's) of `throughput.VOCABULARY` words of the model's word size: only its shape counts."""
  words = ('', glove.UNKNOWN_TOKEN) + tuple(f'word{i}' for i in range(2, throughput.VOCABULARY))
  return glove.WordTable(words, np.zeros((len(words), config.model.word_dim), np.float32), trainable=False)


def traced_training_step(config, mesh: jax.sharding.Mesh) -> tuple[jax.stages.Traced, object]:
  """The trainer's jitted step traced on the global batch of `config` over `mesh`, and the train state it takes
  (shapes). The state comes from `create_state_and_step` evaluated abstractly: its init is traced, not run (only
  the word table is allocated)."""
  model = LBDT(train.model_config(config))
  built = {}

  def build_state():
    state, _, built['step'], _ = train.create_state_and_step(config, model, mesh, word_table(config),
                                                             steps_per_epoch=STEPS_PER_EPOCH)
    return state
  state = jax.eval_shape(build_state)
  return built['step'].trace(state, train._batch_spec(config, mesh)), state  # pylint: disable=protected-access


def inference_operations(config, platforms: tuple[str, ...]) -> list[Op]:
  """The serving artefact's function (`export_probabilities`, symbolic batch) lowered for `platforms` (one program;
  any part that differs between them appears once for each)."""
  model_config = train.model_config(config)
  exported = inference.export_probabilities(model_config, model_dir.abstract_variables(model_config),
                                            (config.input_height, config.input_width), config.max_words,
                                            platforms=platforms)
  return operations(exported.mlir_module())


def summary(ops: list[Op], dtype: str) -> dict:
  """`op_counts` with the portability problems and, for a bfloat16 program, the policy problems."""
  return {**op_counts(ops), 'portability_problems': portability_problems(ops),
          'policy_problems': policy_problems(ops) if dtype == 'bfloat16' else []}


def measure(config, fsdp: int, platforms: tuple[str, ...], with_inference: bool = True) -> dict:
  """Op counts of the training step over all devices (each parameter split over `fsdp` of them) and, with
  `with_inference`, of the inference function, each lowered for `platforms` (one program each; none: neither is
  lowered); and the collectives of the step compiled for the host's (simulated) devices."""
  mesh = sharding.make_mesh(fsdp)
  traced, state = traced_training_step(config, mesh)
  dtype = train.model_config(config).dtype
  parameter_bytes = {name: sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
                     for name, tree in state.params.items()}
  step = operations(traced.lower(lowering_platforms=platforms).compiler_ir('stablehlo')) if platforms else None
  served = inference_operations(config, platforms) if platforms and with_inference else None
  return {'platforms': list(platforms), 'devices': mesh.size, 'fsdp': fsdp, 'batch': config.train.batch_size,
          'dtype': dtype, 'size': [config.input_height, config.input_width], 'parameter_bytes': parameter_bytes,
          'training_step': step and summary(step, dtype), 'inference': served and summary(served, dtype),
          'partitioned_collectives': collective_counts(traced.lower().compile(PARTITIONING_ONLY).as_text())}


def _types_cell(counts: dict) -> str:
  return ', '.join(f'{key} {count}' for key, count in counts.items()) or '0'


def _collective_cell(entry: dict) -> str:
  return f'{entry["count"]} / {entry["bytes"] / 2**20:.1f} MiB' if entry['count'] else '0'


def table(result: dict) -> str:
  rows = []
  for program in ('training_step', 'inference'):
    counts = result[program]
    collectives = result['partitioned_collectives'] if program == 'training_step' else None
    rows.append([program.replace('_', ' '), _types_cell(counts['convolution']), _types_cell(counts['dot_general']),
                 _types_cell(counts['custom_call']),
                 *[_collective_cell(collectives[name]) if collectives else '—' for name in COLLECTIVES],
                 len(counts['portability_problems']) + len(counts['policy_problems'])])
  return metrics.markdown_table(['program', 'convolutions', 'dots', 'custom calls',
                                 *[name.replace('_', '-') for name in COLLECTIVES], 'problems'], rows)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--layers', type=int, default=4, choices=(1, 4))
  parser.add_argument('--size', type=int, default=320)
  parser.add_argument('--dtype', default='bfloat16', choices=('float32', 'bfloat16'))
  parser.add_argument('--devices', type=int, default=8, help='simulated CPU devices of the mesh')
  parser.add_argument('--fsdp', type=int, default=1, help='devices each parameter is split over')
  parser.add_argument('--batch', type=int, help='global batch; default one example per device')
  parser.add_argument('--platform', default='tpu', choices=('tpu', 'cuda'))
  parser.add_argument('--json')
  args = parser.parse_args(argv)
  jax.config.update('jax_num_cpu_devices', args.devices)  # before anything asks for a device
  config = throughput.training_config(args.layers, args.size, args.batch or args.devices, args.dtype)
  result = measure(config, args.fsdp, (args.platform,))
  print(f'LBDT-{args.layers}, {args.size}x{args.size}, {args.dtype}, global batch {result["batch"]} on '
        f'{result["devices"]} devices (fsdp {args.fsdp}), lowered for {args.platform}; collectives per step from the '
        'partitioned program (compiled for the simulated CPU devices)')
  print(table(result))
  parameters = result['parameter_bytes']
  print('Parameters: ' + ', '.join(f'{name} {size / 2**20:.1f} MiB' for name, size in parameters.items()))
  collectives = result['partitioned_collectives']
  in_loops = {name: entry['in_loops'] for name, entry in collectives.items() if entry['in_loops']}
  if in_loops:
    print('In loops (run once per iteration): ' + ', '.join(f'{name} {count}' for name, count in in_loops.items()))
  for program in ('training_step', 'inference'):
    for problem in result[program]['portability_problems'] + result[program]['policy_problems']:
      print(f'{program}: {problem}')
  harness.write_json(args.json, {**result, 'layers': args.layers, 'machine': harness.machine()})


if __name__ == '__main__':
  main()
