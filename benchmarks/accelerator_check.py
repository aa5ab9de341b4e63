"""lbdt-jax on one accelerator, checked in one command within 10 minutes: numerics, speed, memory, one JSON.

  python -m benchmarks.accelerator_check [--reference PATH/TO/LBDT] [--json accelerator_check.json]
      [--platform cuda|tpu|cpu] [--quick] [--limit STEP=SECONDS ...]

Each step runs in its own process under its own time limit (the defaults add up to 9.5 minutes); a step that
fails or runs out of time is recorded with its error and the check goes on. The exit status is 1 if any step
failed, else 0; the performance targets are reported, pass or fail, without changing it.

  device             the device JAX runs on (one: CUDA_VISIBLE_DEVICES=0 unless set), its memory, the versions
  parity_float32     lbdt_jax.tools.check_reference on both fixture cases on the device, float32 at the highest
                     matmul precision, with the tool's tolerances (logits 1e-4, loss 1e-3, gradients 2e-2)
  parity_bfloat16    the eval case with the bfloat16 policy: logits within 2e-2 of the float64 reference; the
                     errors of every activation are reported
  inference          LBDT-4, 320x320, bfloat16, jitted eval-mode forward (benchmarks.throughput): frames/s,
                     memory and MFU at growing batches until the device's memory runs out
  training           the trainer's own bfloat16 step, likewise: samples/s, memory, MFU
  compare_reference  benchmarks.compare_reference on CUDA beside the official PyTorch code (float32 in both);
                     skipped, with the reason, without --reference or without a CUDA build of PyTorch

Targets: bfloat16 inference >= 4,000 frames/s (on an H100 or H200); training >= 40% MFU (against the vendor's
dense bfloat16 peak; known GPUs only); our bfloat16 inference and training >= 3x the official PyTorch code as
released (float32) at the same batch on the same GPU (the float32-against-float32 ratio is reported beside it).

`--quick` runs every step small (a tiny model at 64x64, batch 2, compiled without XLA's expensive optimisations;
no parity case, as they are all the full LBDT-4): with `--platform cpu` it checks the check itself in under a
minute, and no target applies. Compiled programs are cached in JAX_COMPILATION_CACHE_DIR (default: a folder in the
temporary directory), so a rerun compiles less. Made for one GPU; on a TPU host it uses every chip JAX sees, and
reports no MFU (no TPU peak is listed).
"""

import argparse
import collections
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_CASES = os.path.join(ROOT, 'tests', 'fixtures', 'reference')
STEPS = ('device', 'parity_float32', 'parity_bfloat16', 'inference', 'training', 'compare_reference')
# Seconds per step; together 570, leaving half a minute for starting processes and writing the results.
LIMITS = {'device': 30, 'parity_float32': 120, 'parity_bfloat16': 60, 'inference': 90, 'training': 150,
          'compare_reference': 120}
TARGET_FRAMES_PER_SECOND = 4000
TARGET_DEVICES = ('H100', 'H200')
TARGET_MFU = 0.40
TARGET_SPEEDUP = 3.0
VERSIONS = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda12-pjrt', 'libtpu', 'flax', 'optax', 'numpy', 'torch')
LOG_LINES = 30  # of a step's output kept in the JSON


@dataclasses.dataclass(frozen=True)
class Plan:
  """What each step runs."""
  layers: int
  size: int
  tiny: bool  # a tiny model (configs/tiny.py's, one stream, one LBDT stage) instead of LBDT-`layers`
  parity_cases: dict  # dtype -> fixture cases (all of them the full LBDT-4)
  inference_batches: tuple[int, ...]  # ascending; stops at the first that does not fit in memory
  training_batches: tuple[int, ...]
  repeats: int
  compare: tuple[str, ...]  # arguments of benchmarks.compare_reference
  compare_batches: tuple[int, int]  # (inference, training) batch of the comparison


# Batch 8 is the comparison's batch (and the paper's); 32 is the gpu config option's per-device batch.
FULL = Plan(layers=4, size=320, tiny=False,
            parity_cases={'float32': ('case_lbdt4_eval', 'case_lbdt4_train_loss'), 'bfloat16': ('case_lbdt4_eval',)},
            inference_batches=(8, 64, 256, 512), training_batches=(8, 32, 64), repeats=5,
            compare=('--layers', '4', '--size', '320', '--inference-batches', '8', '--train-batch', '8',
                     '--repeats', '3'), compare_batches=(8, 8))
QUICK = Plan(layers=1, size=64, tiny=True, parity_cases={},
             inference_batches=(2,), training_batches=(2,), repeats=2,
             compare=('--layers', '1', '--size', '64', '--inference-batches', '2', '--train-batch', '2',
                      '--repeats', '2'), compare_batches=(2, 2))


class Skipped(Exception):
  """The step cannot run here; the reason is reported and the check is not failed."""


class CheckFailed(Exception):
  """The step ran and a check in it failed."""


# The steps, each run in a process of its own (`--step NAME`). `save(result)` writes what the step has so far, so
# that a step stopped at its time limit keeps what it measured.

def device_step(args, save) -> None:
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks import harness  # pylint: disable=import-outside-toplevel
  info = harness.machine()
  device = jax.devices()[0]
  info.update(platform=device.platform, memory_bytes=(device.memory_stats() or {}).get('bytes_limit'),
              compute_capability=getattr(device, 'compute_capability', None))
  save(info)
  print(f'Device: {harness.describe(info)}; {info["device_count"]} device(s), memory '
        f'{_gib(info["memory_bytes"])}', flush=True)
  if info['backend'] == 'cpu' and args.platform != 'cpu':
    raise CheckFailed("JAX runs on the CPU: no accelerator was found (pip install -e '.[cuda]' or '.[tpu]'; "
                      '--platform cpu checks on the CPU on purpose)')


def parity_step(plan: Plan, dtype: str, save) -> None:
  if not plan.parity_cases:
    raise Skipped('--quick: the parity cases are the full LBDT-4 (tests/test_reference_parity.py runs them on CPU)')
  from lbdt_jax.tools import check_reference  # pylint: disable=import-outside-toplevel
  reports, failed = {}, []
  for case in plan.parity_cases[dtype]:
    start = time.perf_counter()
    report = check_reference.run_case(os.path.join(REFERENCE_CASES, case),
                                      dtype=None if dtype == 'float32' else dtype)
    reports[case] = {**report, 'seconds': time.perf_counter() - start}
    save({'dtype': dtype, 'cases': reports})
    check_reference.print_report(report)
    if not report['passed']:
      failed.append(f'{case}: ' + ', '.join(f'{k} {v:.2e} > {report["tolerances"][k]:g}'
                                           for k, v in report['failures'].items()))
  if failed:
    raise CheckFailed(f'{dtype} parity missed its tolerances: ' + '; '.join(failed))


def throughput_step(plan: Plan, mode: str, save) -> None:
  from benchmarks import flops, harness, throughput  # pylint: disable=import-outside-toplevel
  from lbdt_jax import train  # pylint: disable=import-outside-toplevel
  info = harness.machine()
  counted = dataclasses.replace(train.model_config(_benchmark_config(plan, 1)), dtype='float32', remat=False)
  forward_flops = flops.model_flops(counted, plan.size, harness.NUM_WORDS)
  per_item = forward_flops * (throughput.TRAINING_FLOPS_PER_FORWARD if mode == 'training' else 1)
  if info['backend'] == 'cpu' and plan.tiny:  # small matmuls: a tiny model's ceiling, measured in seconds
    peak = {'flops_per_second': harness.matmul_peak_flops('bfloat16', sizes=(256, 512), repeats=3),
            'source': 'fastest measured square matmul (256, 512)'}
  else:
    peak = throughput.utilisation_peak(info, 'bfloat16')
  output = {'dtype': 'bfloat16', 'layers': plan.layers, 'size': plan.size, 'tiny_model': plan.tiny,
            'forward_flops': forward_flops, 'peak': peak, 'results': []}
  run = throughput.inference_benchmark if mode == 'inference' else throughput.training_benchmark
  for batch in plan.inference_batches if mode == 'inference' else plan.training_batches:
    try:
      result = run(_benchmark_config(plan, batch), batch, plan.repeats)
    except Exception as error:  # pylint: disable=broad-except
      if not _out_of_memory(error):
        raise
      output['out_of_memory_at_batch'] = batch
      output['out_of_memory'] = str(error).strip().splitlines()[0][:500]
      save(output)
      print(f'{mode} batch {batch}: out of memory', flush=True)
      break
    result['batch'] = batch
    result['model_tflops_per_second'] = result['items_per_second'] * per_item / 1e12
    result['model_flops_utilisation'] = (result['model_tflops_per_second'] * 1e12 / peak['flops_per_second']
                                         if peak['flops_per_second'] else None)
    output['results'].append(result)
    save(output)
    mfu = result['model_flops_utilisation']
    print(f'{mode} bfloat16 batch {batch}: {result["items_per_second"]:.1f}/s, '
          f'{result["model_tflops_per_second"]:.1f} model TFLOP/s, MFU {f"{100 * mfu:.1f}%" if mfu else "—"}, '
          f'memory {_gib(result["memory_bytes"])}, compile {result["compile_seconds"]:.1f} s', flush=True)
  if not output['results']:
    raise CheckFailed(f'the smallest {mode} batch ({output["out_of_memory_at_batch"]}) did not fit in memory')


def compare_step(plan: Plan, args, save) -> None:
  if not args.reference:
    raise Skipped('no --reference PATH (a checkout of github.com/dzh19990407/LBDT)')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise Skipped("PyTorch is not installed (pip install -e '.[torch]' with a CUDA build)") from error
  device = 'cpu' if args.platform == 'cpu' else 'cuda'
  if device == 'cuda' and not torch.cuda.is_available():
    raise Skipped(f'PyTorch {torch.__version__} has no CUDA device (a CPU build, or no GPU visible to it)')
  from benchmarks import compare_reference  # pylint: disable=import-outside-toplevel
  output = os.path.join(os.path.dirname(args.out), 'compare_reference.json')
  try:
    compare_reference.main(['--reference', args.reference, '--device', device, *plan.compare, '--json', output])
  finally:
    if os.path.isfile(output):
      with open(output) as f:
        save(json.load(f))


def _benchmark_config(plan: Plan, batch: int):
  from benchmarks import throughput  # pylint: disable=import-outside-toplevel
  config = throughput.training_config(plan.layers, plan.size, batch, 'bfloat16')
  if plan.tiny:
    from configs import tiny  # pylint: disable=import-outside-toplevel
    config.model.update({**tiny.get_config().model.to_dict(), 'word_dim': 300, 'dtype': 'bfloat16',
                         'temporal_encoder': False, 'lbdt_stages': (5,)})
  return config


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def run_step(name: str, plan: Plan, args) -> int:
  """In the step's own process: runs it, writes {'result', and 'error' or 'skipped'} to args.out."""
  record = {'result': None}

  def save(result=None, **fields):
    record.update(result=result, **fields)
    temporary = args.out + '.tmp'
    with open(temporary, 'w') as f:
      json.dump(record, f, indent=1, default=str)
    os.replace(temporary, args.out)

  steps = {'device': lambda: device_step(args, save),
           'parity_float32': lambda: parity_step(plan, 'float32', save),
           'parity_bfloat16': lambda: parity_step(plan, 'bfloat16', save),
           'inference': lambda: throughput_step(plan, 'inference', save),
           'training': lambda: throughput_step(plan, 'training', save),
           'compare_reference': lambda: compare_step(plan, args, save)}
  try:
    steps[name]()
  except Skipped as reason:
    save(record['result'], skipped=str(reason))
    return 0
  except CheckFailed as error:
    save(record['result'], error=str(error))
    return 1
  except SystemExit as error:  # the benchmarks' command lines stop with a message
    if error.code in (None, 0):
      return 0
    save(record['result'], error=str(error.code))
    return 1
  except Exception as error:  # pylint: disable=broad-except
    traceback.print_exc()
    save(record['result'], error=f'{type(error).__name__}: {str(error).strip()[:2000]}')
    return 1
  return 0


# The check: runs the steps, collects their records, judges the targets, writes the JSON.

def launch(name: str, args, limit: float, directory: str) -> dict:
  """Runs one step in a process of its own, its output streamed with the step's name; stops it at `limit`."""
  out = os.path.join(directory, f'{name}.json')
  command = [sys.executable, '-m', 'benchmarks.accelerator_check', '--step', name, '--out', out]
  command += ['--platform', args.platform] if args.platform else []
  command += ['--reference', args.reference] if args.reference else []
  command += ['--quick'] if args.quick else []
  print(f'\n== {name} (limit {limit:g} s)', flush=True)
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=ROOT, env=step_environment(name, args), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, errors='replace', start_new_session=True)
  tail = collections.deque(maxlen=LOG_LINES)

  def relay():
    for line in process.stdout:
      tail.append(line.rstrip())
      print(f'[{name}] {line}', end='', flush=True)

  reader = threading.Thread(target=relay, daemon=True)
  reader.start()
  timed_out = False
  try:
    returncode = process.wait(timeout=limit)
  except subprocess.TimeoutExpired:
    timed_out = True
  finally:  # at the limit, or when the check itself is interrupted (the step runs in a session of its own)
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)  # the step's process group: its process and anything it started
      returncode = process.wait()
  reader.join(timeout=5)
  seconds = time.perf_counter() - start
  record = {}
  if os.path.isfile(out):
    with open(out) as f:
      record = json.load(f)
  step = {'seconds': round(seconds, 1), 'limit_seconds': limit, 'result': record.get('result')}
  if timed_out:
    step.update(status='failed', error=f'stopped at its time limit of {limit:g} s (--limit {name}=SECONDS)')
  elif record.get('skipped'):
    step.update(status='skipped', reason=record['skipped'])
  elif returncode or record.get('error'):
    step.update(status='failed', error=record.get('error') or f'exit status {returncode}: {_last_line(tail)}')
  else:
    step['status'] = 'passed'
  if step['status'] == 'failed':
    step['log_tail'] = list(tail)
  print(f'== {name}: {step["status"]} in {seconds:.0f} s'
        f'{": " + (step.get("error") or step.get("reason")) if step["status"] != "passed" else ""}', flush=True)
  return step


def step_environment(name: str, args) -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, (ROOT, env.get('PYTHONPATH'))))
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'lbdt_jax_accelerator_check'))
  if args.platform:  # the CPU beside an accelerator: FLOPs are counted on its lowering (benchmarks.flops)
    env['JAX_PLATFORMS'] = args.platform if args.platform == 'cpu' else f'{args.platform},cpu'
  if args.platform != 'cpu':
    env.setdefault('CUDA_VISIBLE_DEVICES', '0')  # one GPU: the figures are per device
  if args.quick:  # compiling dominates small runs; the figures of a quick run are not measurements anyway
    env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  if name == 'compare_reference':
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'  # PyTorch shares the GPU with JAX in that process
  return env


def versions() -> dict:
  found = {'python': platform.python_version()}
  for name in VERSIONS:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  commit = _command(['git', '-C', ROOT, 'rev-parse', 'HEAD'])
  if commit:
    found['lbdt_jax_commit'] = commit
  driver = shutil.which('nvidia-smi') and _command(
      ['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'])
  if driver:
    found['nvidia_smi'] = driver.splitlines()
  return found


def targets(steps: dict, plan: Plan, quick: bool) -> list[dict]:
  """Each target with its measured value and whether it was met (None: not measured, or not applicable here)."""
  device = (steps.get('device', {}).get('result') or {}).get('device', '')
  inference = _throughput_results(steps, 'inference')
  training = _throughput_results(steps, 'training')
  peak = ((steps.get('training', {}).get('result') or {}).get('peak') or {}).get('source', '')
  rows = []

  def add(name, description, value, target, applies, note):
    met = None if value is None or not applies else value >= target
    rows.append({'name': name, 'description': description, 'value': value, 'target': target, 'passed': met,
                 **({} if met is not None else {'note': note})})

  quick_note = '--quick: a tiny model, not the target'
  rate = max((r['items_per_second'] for r in inference), default=None)
  add('inference_frames_per_second', 'LBDT-4 bfloat16 inference at 320x320, best batch (frames/s)', rate,
      TARGET_FRAMES_PER_SECOND, not quick and any(kind in device for kind in TARGET_DEVICES),
      quick_note if quick else f'not measured, or the target is for {" / ".join(TARGET_DEVICES)} (this: {device})')
  mfu = max((r['model_flops_utilisation'] or 0 for r in training), default=None)
  add('training_mfu', 'LBDT-4 bfloat16 training step, best batch: model FLOPs utilisation', mfu, TARGET_MFU,
      not quick and '(vendor)' in peak, quick_note if quick else 'not measured, or no vendor peak for this device')
  comparison = steps.get('compare_reference', {})
  compared = comparison.get('status') == 'passed' and comparison['result']['machine']['torch_device'] == 'cuda'
  for mode, ours, description in (('inference', inference, 'inference frames/s'),
                                  ('training', training, 'training samples/s')):
    batch = plan.compare_batches[mode == 'training']
    ratio, same_precision = _speedups(comparison.get('result'), mode, batch, ours)
    add(f'speedup_{mode}', f'our bfloat16 {description} / the official PyTorch code\'s (float32), same batch',
        ratio, TARGET_SPEEDUP, not quick and compared,
        quick_note if quick else 'no comparison on CUDA (see the compare_reference step)')
    rows[-1]['float32_speedup'] = same_precision
  return rows


def _throughput_results(steps: dict, name: str) -> list[dict]:
  return (steps.get(name, {}).get('result') or {}).get('results', [])


def _speedups(comparison: dict | None, mode: str, batch: int,
              ours: list[dict]) -> tuple[float | None, float | None]:
  """(our bfloat16 rate / the reference's, our float32 rate / the reference's) at the comparison's batch."""
  timings = comparison and (comparison['training'] if mode == 'training' else comparison['inference'].get(str(batch)))
  if not timings:
    return None, None
  reference_rate = batch / timings['reference']['median']
  same_precision = timings['reference']['median'] / timings['ours']['median']
  ours_bfloat16 = next((r['items_per_second'] for r in ours if r['batch'] == batch), None)
  return (ours_bfloat16 / reference_rate if ours_bfloat16 else None), same_precision


def summary(report: dict) -> str:
  lines = [f'\nAccelerator check: {report["device"].get("device", "?")} ({report["device"].get("backend", "?")}), '
           f'{report["seconds"]:.0f} s']
  for name, step in report['steps'].items():
    detail = step.get('error') or step.get('reason') or ''
    lines.append(f'  {name:<18} {step["status"]:<8} {step["seconds"]:6.1f} s  {detail}'.rstrip())
  lines.append('Targets:')
  for row in report['targets']:
    value = '—' if row['value'] is None else f'{row["value"]:.3g}'
    verdict = {True: 'met', False: 'MISSED', None: 'n/a'}[row['passed']]
    lines.append(f'  {row["name"]:<28} {value:>8} (target {row["target"]:g}): {verdict}'
                 f'{"  (" + row["note"] + ")" if row.get("note") else ""}')
  failed = [name for name, step in report['steps'].items() if step['status'] == 'failed']
  lines.append(f'{"FAILED: " + ", ".join(failed) if failed else "All steps passed or were skipped."}')
  return '\n'.join(lines)


def check(args) -> int:
  plan = QUICK if args.quick else FULL
  limits = {**LIMITS, **args.limit}
  report = {'command': [sys.executable, '-m', 'benchmarks.accelerator_check', *args.argv],
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'quick': args.quick, 'platform': args.platform or 'default', 'plan': dataclasses.asdict(plan),
            'versions': versions(), 'device': {}, 'steps': {}, 'targets': []}
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix='accelerator_check_') as directory:
    for name in STEPS:
      if report['steps'].get('device', {}).get('status') == 'failed':
        report['steps'][name] = {'status': 'skipped', 'reason': 'the device step failed', 'seconds': 0.0,
                                 'limit_seconds': limits[name], 'result': None}
      else:
        report['steps'][name] = launch(name, args, limits[name], directory)
      report['device'] = report['steps']['device'].get('result') or {}
      report['seconds'] = round(time.perf_counter() - start, 1)
      report['targets'] = targets(report['steps'], plan, args.quick)
      report['passed'] = all(step['status'] != 'failed' for step in report['steps'].values())
      _write(args.json, report)
  print(summary(report))
  print(f'Wrote {args.json}')
  return 0 if report['passed'] else 1


def _write(path: str, report: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = path + '.tmp'
  with open(temporary, 'w') as f:
    json.dump(report, f, indent=1, default=str)
  os.replace(temporary, path)


def _command(command: list[str]) -> str | None:
  try:
    return subprocess.run(command, capture_output=True, text=True, timeout=20, check=True).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _last_line(lines) -> str:
  return next((line for line in reversed(lines) if line.strip()), 'no output')


def _gib(value) -> str:
  return f'{value / 2**30:.1f} GiB' if value else '—'


def _limit(text: str) -> tuple[str, float]:
  name, _, seconds = text.partition('=')
  if name not in LIMITS:
    raise argparse.ArgumentTypeError(f'unknown step {name!r}: choose from {", ".join(STEPS)}')
  try:
    return name, float(seconds)
  except ValueError:
    raise argparse.ArgumentTypeError(f'--limit {text}: SECONDS must be a number') from None


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reference', help='checkout of github.com/dzh19990407/LBDT, for compare_reference')
  parser.add_argument('--json', default='accelerator_check.json', help='where the results go')
  parser.add_argument('--platform', choices=('cuda', 'tpu', 'cpu'), help="JAX's platform (default: JAX's choice)")
  parser.add_argument('--quick', action='store_true', help='every step small: checks the check (targets n/a)')
  parser.add_argument('--limit', type=_limit, action='append', default=[], metavar='STEP=SECONDS',
                      help='time limit of a step (repeatable)')
  parser.add_argument('--step', choices=STEPS, help=argparse.SUPPRESS)  # runs one step (in its own process)
  parser.add_argument('--out', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.argv, args.limit = argv, dict(args.limit)
  if args.reference:
    args.reference = os.path.abspath(args.reference)
  if args.step:
    return run_step(args.step, QUICK if args.quick else FULL, args)
  return check(args)


if __name__ == '__main__':
  sys.exit(main())
