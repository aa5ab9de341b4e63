"""Does the language bridge help? The paper's Tab. 5 ablations (and more) on the cue-tagged synthetic set.

  python -m experiments.bridge_study [--seeds 0,1,2] [--workers 2] [--variants full,direct,...]
      [--workdir runs/bridge_study] [--output docs/study] [--config configs/study.py] [--set key=value ...]

Every variant trains with the same config, budget and data (configs/study.py: LBDT-1, ResNet-18 at width 16,
64x64) for each seed (the seed sets initialisation, data order and dropout), one `main.py` run per (variant, seed),
`--workers` runs at a time, each on one CPU thread. Runs already finished in the workdir are reused, so an
interrupted study resumes. Results: mean IoU and P@0.5 per cue kind (appearance / motion / both) on the test and
compositional splits, mean ± std over seeds, as `OUTPUT/results.md` (tables, commands, wall time), `OUTPUT/runs.json`
(every run's numbers) and `OUTPUT/bridge_study.png` (bar plot).
"""

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
from concurrent import futures

import numpy as np

from lbdt_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUES = ('appearance', 'motion', 'both')
METRICS = {'mean_IoU': 'mean IoU', 'P@0.5': 'P@0.5'}
# One training per core: XLA and tf.data each on one thread.
SINGLE_THREAD = {'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1',
                 'TF_NUM_INTEROP_THREADS': '1', 'TF_NUM_INTRAOP_THREADS': '1'}


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  options: str  # configs/default.py options
  description: str
  paper: str  # the paper's row it corresponds to (LBDT-1 on A2D, overall / mean IoU)


# Tab. 5 rows 1-4 have no BCA (neither LD nor STC), as in the paper.
VARIANTS = (
    Variant('full', 'lbdt1', 'LBDT-1, code form (shared weights for both directions), BCA', 'Tab. 5 row 7: 70.1 / 61.2'),
    Variant('paper_form', 'lbdt1,paper_form', 'separate transfer weights per direction (the paper\'s text)', '—'),
    Variant('direct', 'lbdt1,direct,no_denoiser,no_activator',
            'no bridge: language fused into each stream, direct spatial-temporal cross-attention; no BCA',
            'Tab. 5 row 1: 61.6 / 54.5'),
    Variant('s2t_only', 'lbdt1,s2t_only,no_denoiser,no_activator', 'only S→L→T (appearance into the temporal '
            'stream); no BCA', 'Tab. 5 row 2: 67.3 / 56.1'),
    Variant('t2s_only', 'lbdt1,t2s_only,no_denoiser,no_activator', 'only T→L→S (motion into the spatial stream); '
            'no BCA', 'Tab. 5 row 3: 68.6 / 58.3'),
    Variant('no_bca', 'lbdt1,no_denoiser,no_activator', 'both directions, no BCA', 'Tab. 5 row 4: 69.3 / 59.8'),
    Variant('no_denoiser', 'lbdt1,no_denoiser', 'BCA without the language denoiser (STC only)',
            'Tab. 5 row 5: 69.5 / 60.4'),
    Variant('no_activator', 'lbdt1,no_activator', 'BCA without the consistency activator (LD only)',
            'Tab. 5 row 6: 69.9 / 59.9'),
    Variant('single_stream', 'lbdt1,single_stream', 'no temporal encoder (frame only; LBDT words↔frame, BCA LD)',
            '—'),
    Variant('lbdt4', 'lbdt4', 'LBDT-4 (four transfer layers per stage)', 'Tab. 1: LBDT-4 70.4 / 62.1 vs LBDT-1 '
            '70.1 / 61.2'),
    # Tab. 6: the frame interval δ of the frame difference (`full` is δ = 6). One prepared store serves them all.
    Variant('delta1', 'lbdt1,delta=1', 'LBDT-1 with frame interval δ = 1', 'Tab. 6 δ=1: 68.9 / 60.0'),
    Variant('delta3', 'lbdt1,delta=3', 'LBDT-1 with frame interval δ = 3', 'Tab. 6 δ=3: 69.4 / 60.1'),
    Variant('delta9', 'lbdt1,delta=9', 'LBDT-1 with frame interval δ = 9', 'Tab. 6 stops at δ=7: 69.0 / 60.8'),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


def run_command(variant: Variant, seed: int, args) -> list[str]:
  command = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={args.config}:{variant.options}',
             f'--workdir={run_directory(args.workdir, variant, seed)}', f'--config.seed={seed}']
  if args.data_dir:
    command.append(f'--config.data.data_dir={args.data_dir}')
  return command + [f'--config.{setting}' for setting in args.set]


def run_directory(workdir: str, variant: Variant, seed: int) -> str:
  return os.path.join(os.path.abspath(workdir), variant.name, f'seed{seed}')


def finished_results(directory: str) -> dict | None:
  """The final evaluation of a finished run (its export is written last), else None."""
  if not os.path.isfile(os.path.join(directory, 'export', 'manifest.json')):
    return None
  steps = sorted(glob.glob(os.path.join(directory, 'eval', 'step_*', 'results.json')),
                 key=lambda path: int(os.path.basename(os.path.dirname(path))[len('step_'):]))
  if not steps:
    return None
  with open(steps[-1]) as f:
    return json.load(f)


def train_one(variant: Variant, seed: int, args) -> tuple[dict, float]:
  directory = run_directory(args.workdir, variant, seed)
  results = finished_results(directory)
  if results is not None:
    return results, 0.0
  os.makedirs(directory, exist_ok=True)
  log_path = os.path.join(directory, 'log.txt')
  start = time.time()
  with open(log_path, 'w') as log:
    process = subprocess.run(run_command(variant, seed, args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **SINGLE_THREAD})
  results = finished_results(directory)
  if process.returncode or results is None:
    raise RuntimeError(f'Run {variant.name} seed {seed} failed (exit code {process.returncode}); see {log_path}')
  return results, time.time() - start


def prepare_data(args) -> None:
  """Builds the data set once, before the parallel runs (they would otherwise race to build it)."""
  command = [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=prepare', f'--config={args.config}']
  if args.data_dir:
    command.append(f'--config.data.data_dir={args.data_dir}')
  subprocess.run(command + [f'--config.{setting}' for setting in args.set], cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL)


def summarise(runs: list[dict]) -> dict:
  """{variant: {split: {metric: {cue: (mean, std, n)}}}} over seeds; cue 'all' is the whole split."""
  summary = {}
  for name in dict.fromkeys(run['variant'] for run in runs):
    seeds = [run['results'] for run in runs if run['variant'] == name]
    splits = {}
    for split in seeds[0]:
      if not isinstance(seeds[0][split], dict) or 'mean_IoU' not in seeds[0][split]:
        continue
      per_metric = {}
      for metric in METRICS:
        per_cue = {}
        for cue in ('all', *CUES):
          values = [100 * (r[split][metric] if cue == 'all' else r[split]['per_cue'][cue][metric])
                    for r in seeds if cue == 'all' or cue in r[split].get('per_cue', {})]
          if values:
            per_cue[cue] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                            len(values))
        per_metric[metric] = per_cue
      splits[split] = per_metric
    summary[name] = splits
  return summary


def markdown_tables(summary: dict) -> str:
  sections = []
  splits = list(next(iter(summary.values())))
  columns = [(split, cue) for split in splits for cue in ('all', *CUES)]
  header = ['variant'] + [f'{split.split(":")[-1]} {cue}' for split, cue in columns]
  for metric, metric_name in METRICS.items():
    rows = []
    for name, splits_summary in summary.items():
      values = [splits_summary.get(split, {}).get(metric, {}).get(cue) for split, cue in columns]
      rows.append([name] + [f'{value[0]:.1f} ± {value[1]:.1f}' if value else '—' for value in values])
    table = metrics.markdown_table(header, rows, align='-' + 'r' * len(columns))
    sections.append(f'**{metric_name}** (%, mean ± std over seeds)\n\n' + table)
  return '\n\n'.join(sections)


def plot(summary: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  splits = list(next(iter(summary.values())))
  names = list(summary)
  figure, axes = plt.subplots(len(splits), 1, figsize=(max(8, 1.1 * len(names)), 3.4 * len(splits)), squeeze=False)
  width = 0.8 / (1 + len(CUES))
  for axis, split in zip(axes[:, 0], splits):
    for k, cue in enumerate(('all', *CUES)):
      values = [summary[n].get(split, {}).get('mean_IoU', {}).get(cue, (np.nan, 0.0, 0)) for n in names]
      axis.bar(np.arange(len(names)) + (k - len(CUES) / 2) * width, [v[0] for v in values], width,
               yerr=[v[1] for v in values], capsize=2, label=cue)
    axis.set_xticks(np.arange(len(names)))
    axis.set_xticklabels(names, rotation=20, fontsize=8)
    axis.set_ylabel('mean IoU (%)')
    axis.set_title(f'{split}: mean ± std over seeds', fontsize=9)
    axis.grid(True, axis='y', alpha=0.3)
    axis.legend(fontsize=7, ncol=4)
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def report(runs: list[dict], args, wall_seconds: float, commands: list[str]) -> str:
  summary = summarise(runs)
  variants = [VARIANTS_BY_NAME[name] for name in summary]
  lines = ['# Language-bridge study: results', '',
           f'{len(runs)} runs ({len(variants)} variants × seeds {args.seeds}), config `{args.config}`'
           + (f' with {", ".join(args.set)}' if args.set else '') + f'; wall time {wall_seconds / 60:.1f} min '
           f'with {args.workers} parallel runs. Reproduce with:', '', '```bash', ' '.join(commands), '```', '',
           markdown_tables(summary), '',
           metrics.markdown_table(['variant', 'options', 'what it is', 'paper (A2D, LBDT-1: overall / mean IoU)'],
                                  [[v.name, f'`{v.options}`', v.description, v.paper] for v in variants])]
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--variants', default=','.join(v.name for v in VARIANTS))
  parser.add_argument('--workdir', default='runs/bridge_study')
  parser.add_argument('--output', default='docs/study')
  parser.add_argument('--config', default='configs/study.py')
  parser.add_argument('--data-dir', default='', help='prepared data (default: config.data.data_dir)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override for every run, e.g. --set train.num_steps=100')
  args = parser.parse_args(argv)
  unknown = [name for name in args.variants.split(',') if name not in VARIANTS_BY_NAME]
  if unknown:
    parser.error(f'unknown variants {unknown}; choose from {list(VARIANTS_BY_NAME)}')
  if args.workers < 1:
    parser.error('--workers must be at least 1')
  seeds = [int(s) for s in args.seeds.split(',')]
  variants = [VARIANTS_BY_NAME[name] for name in args.variants.split(',')]
  jobs = [(variant, seed) for variant in variants for seed in seeds]
  start = time.time()
  prepare_data(args)
  runs, trained_seconds = [], []
  with futures.ThreadPoolExecutor(args.workers) as pool:
    pending = {pool.submit(train_one, variant, seed, args): (variant, seed) for variant, seed in jobs}
    for done in futures.as_completed(pending):
      variant, seed = pending[done]
      results, seconds = done.result()  # a failed run stops the study with its log's path
      runs.append({'variant': variant.name, 'seed': seed, 'seconds': seconds, 'results': results})
      if seconds:
        trained_seconds.append(seconds)
      remaining = len(jobs) - len(runs)
      eta = (np.mean(trained_seconds) * remaining / args.workers / 60) if trained_seconds else 0.0
      print(f'[{len(runs)}/{len(jobs)}] {variant.name} seed {seed}: '
            f'{"reused" if not seconds else f"{seconds:.0f} s"}; ETA {eta:.1f} min', flush=True)
  order = {(v.name, s): i for i, (v, s) in enumerate(jobs)}
  runs.sort(key=lambda run: order[run['variant'], run['seed']])
  wall_seconds = time.time() - start
  os.makedirs(args.output, exist_ok=True)
  commands = ['python -m experiments.bridge_study'] + [a for a in (argv if argv is not None else sys.argv[1:])]
  with open(os.path.join(args.output, 'results.md'), 'w') as f:
    f.write(report(runs, args, wall_seconds, commands))
  with open(os.path.join(args.output, 'runs.json'), 'w') as f:
    json.dump({'config': args.config, 'overrides': args.set, 'wall_seconds': wall_seconds, 'runs': runs}, f, indent=1)
  plot(summarise(runs), os.path.join(args.output, 'bridge_study.png'))
  print(markdown_tables(summarise(runs)))
  print(f'\nWrote {args.output}/results.md, runs.json and bridge_study.png ({wall_seconds / 60:.1f} min)')


if __name__ == '__main__':
  main()
