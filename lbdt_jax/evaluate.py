"""Evaluation: `evaluate(config, workdir)` (`--mode=evaluate`) and the evaluations during training.

For every "<data set>:<split>" of `config.data.evaluate`, every example is predicted exactly once across processes
(padding is dropped by the `valid` flag), the probability map is brought to the original frame size and scored:

  A2D / J-HMDB / synthetic   the paper's P@0.5..0.9, mAP (0.50:0.05:0.95), overall and mean IoU, and COCO mask AP
                             (pycocotools, as MTTR/ReferFormer report); per cue kind on the synthetic set.
                             `config.eval.protocol='reference'` scores exactly as the official eval.py does instead
                             (prediction and bilinear-resized ground truth at the input size, nearest back up).
  Ref-DAVIS17                J, F and J&F of the DAVIS 2017 toolkit, per expression set and averaged over the four.
  MeViS train / valid_u      J, F and J&F of MeViS's tools/eval_mevis.py: per expression the means over every frame
                             of its video, then the means over expressions (as `lbdt_jax.tools.score` scores folders).
  Refer-YouTube-VOS valid    no masks: PNGs Annotations/<video>/<expression_id>/<frame>.png zipped for codalab;
  MeViS valid                <video>/<expression_id>/<frame>.png at the top of the zip. Each zip is checked against
                             the split's samples (every frame of every expression, at its frame's size) first.

Results go to workdir/eval/step_<N>/results.json and to the metric writer, and are printed as tables in the
paper's layout. With several processes each writes its samples' scores next to it and process 0 combines them.

`--mode=evaluate` reads parameters only (no optimizer state, no training data): from the newest checkpoint of
the work directory, or from a model directory. With `config.eval.follow` it runs beside training instead,
evaluating every new checkpoint once until training has finished.
"""

import functools
import time
import zipfile

import cv2
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from pycocotools import mask as mask_utils

from data_pipeline import glove, input_pipeline, loader, prepare, tokenizer
from lbdt_jax import batch_sizes, checkpointing, inference, metrics, model_dir, paths, progress, sharding, visualize
from lbdt_jax.models import LBDT, LBDTConfig

MODEL_INPUTS = inference.MODEL_INPUTS
PROTOCOLS = ('original', 'reference')
J_AND_F_DATA_SETS = ('ref_davis17', 'mevis')
# Where each data set's server wants a frame's PNG inside the submission zip.
SUBMISSION_PATHS = {
    'ref_youtube_vos': 'Annotations/{video}/{expression}/{frame:05d}.png',
    'mevis': '{video}/{expression}/{frame:05d}.png',
}


def _rle(mask: np.ndarray) -> dict:
  encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': [int(s) for s in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def _from_rle(rle: dict) -> np.ndarray:
  return mask_utils.decode({'size': rle['size'], 'counts': rle['counts'].encode('ascii')}).astype(bool)


def _sample_records(name: str, batch: dict, probabilities: np.ndarray, protocol: str) -> list[dict]:
  """Scores of the valid examples of one (local) batch."""
  records = []
  for i in np.flatnonzero(batch['valid']):
    height, width = (int(v) for v in batch['orig_size'][i])
    full = cv2.resize(probabilities[i], (width, height), interpolation=cv2.INTER_LINEAR)
    prediction = full > 0.5
    record = {key: batch[key][i].item() for key in ('video_id', 'frame_index', 'object_id', 'expression_id',
                                                     'sentence') if key in batch}
    for extra in ('cue', 'expression_set'):
      if extra in batch:
        record[extra] = str(batch[extra][i])
    if not batch['has_mask'][i]:
      record['prediction'] = _rle(prediction)
      records.append(record)
      continue
    truth = batch['orig_mask'][i, :height, :width] > 0
    if name in J_AND_F_DATA_SETS:
      record.update(J=metrics.jaccard(prediction, truth), F=metrics.boundary_f(prediction, truth))
    elif protocol == 'reference':
      record.update(metrics.compatible_sample_scores(probabilities[i], batch['mask'][i], (height, width)))
      record.update(prediction_rle=_rle(metrics.torch_nearest_resize(probabilities[i] > 0.5, (height, width))),
                    truth_rle=_rle(metrics.torch_nearest_resize(batch['mask'][i] > 0, (height, width))),
                    score=metrics.mask_score(probabilities[i]))
    else:
      record.update(metrics.sample_scores(prediction, truth))
      record.update(prediction_rle=_rle(prediction), truth_rle=_rle(truth),
                    score=metrics.mask_score(probabilities[i]))
    records.append(record)
  return records


def aggregate(name: str, records: list[dict]) -> dict:
  """Data-set-level results from the per-sample records."""
  if not records:
    return {'num_samples': 0}
  if 'prediction' in records[0]:
    return {'num_samples': len(records)}
  if name == 'ref_davis17':
    davis = metrics.DavisAccumulator()
    for r in records:
      davis.add_scores(r['J'], r['F'], f'{r["video_id"]}/{r["object_id"]}/{r["expression_id"]}',
                       r.get('expression_set', 'default'))
    return {**davis.result(), 'per_set': davis.sets(), 'num_samples': len(records)}
  if name == 'mevis':  # one sequence per expression, one set: the means over expressions
    mevis = metrics.DavisAccumulator()
    for r in records:
      mevis.add_scores(r['J'], r['F'], f'{r["video_id"]}_{r["expression_id"]}')
    per_expression = {sequence: [scores['J'], scores['F']] for (_, sequence), scores in mevis.sequences().items()}
    return {**mevis.result(), 'num_expressions': len(per_expression), 'num_samples': len(records),
            'per_expression': per_expression}
  results = _referring(records)
  if 'cue' in records[0]:
    results['per_cue'] = {cue: _referring([r for r in records if r['cue'] == cue], coco=False)
                          for cue in sorted({r['cue'] for r in records})}
  return results


def _referring(records: list[dict], coco: bool = True) -> dict:
  paper = metrics.ReferringAccumulator()
  for r in records:
    paper.add(r)
  results = paper.result()
  if coco:
    accumulator = metrics.CocoMaskAccumulator()
    for r in records:
      accumulator.add(_from_rle(r['prediction_rle']), _from_rle(r['truth_rle']), r['score'])
    results.update({f'coco_{key}': value for key, value in accumulator.result().items()})
  return results


def check_submission(name: str, records: list[dict], samples: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
  """{path in the zip: (height, width)} of the records, after checking them against the split's samples
  (`SplitSource.sample_table()`): every expected file once, none more, each at its frame's size."""
  layout = SUBMISSION_PATHS.get(name)
  if layout is None:
    raise ValueError(f'no submission layout for {name} (known: {sorted(SUBMISSION_PATHS)})')
  expected = {layout.format(video=v, expression=e, frame=f): tuple(int(x) for x in size)
              for v, e, f, size in zip(samples['video_id'], samples['expression_id'], samples['frame_index'],
                                       samples['orig_size'])}
  written, problems = {}, []
  for r in records:
    path = layout.format(video=r['video_id'], expression=r['expression_id'], frame=r['frame_index'])
    size = tuple(r['prediction']['size'])
    if path in written:
      problems.append(f'{path} predicted twice')
    elif path in expected and size != expected[path]:
      problems.append(f'{path} is {size[0]}x{size[1]}, its frame {expected[path][0]}x{expected[path][1]}')
    written[path] = size
  missing, extra = sorted(expected.keys() - written.keys()), sorted(written.keys() - expected.keys())
  problems += [f'{len(missing)} files missing, e.g. {missing[:3]}'] if missing else []
  problems += [f'{len(extra)} files that belong to no sample, e.g. {extra[:3]}'] if extra else []
  if problems:
    raise ValueError(f'{name} submission not written, it would be rejected: ' + '; '.join(problems[:5]))
  return written


def _write_submission(name: str, directory: epath.Path, records: list[dict], samples: dict) -> tuple[epath.Path, str]:
  """The server's zip of 0/255 PNGs (SUBMISSION_PATHS), checked first; (its path, a summary line)."""
  sizes = check_submission(name, records, samples)
  path = directory / 'submission.zip'
  directory.mkdir(parents=True, exist_ok=True)
  layout = SUBMISSION_PATHS[name]
  with path.open('wb') as file, zipfile.ZipFile(file, 'w', zipfile.ZIP_DEFLATED) as archive:
    for r in records:
      png = cv2.imencode('.png', _from_rle(r['prediction']).astype(np.uint8) * 255)[1].tobytes()
      archive.writestr(layout.format(video=r['video_id'], expression=r['expression_id'], frame=r['frame_index']), png)
  videos = {(r['video_id']) for r in records}
  expressions = {(r['video_id'], r['expression_id']) for r in records}
  summary = (f'{len(sizes)} masks of {len(expressions)} expressions in {len(videos)} videos, every frame of the '
             f'split present at its size')
  return path, summary


class _Pictures:
  """Collects a few predictions to draw: one frame of several expressions (a grid) and every frame of one
  expression (an animated clip)."""

  def __init__(self, count: int):
    self.count, self.stills, self.clip, self.clip_key = count, [], [], None
    self.first_inputs = None  # model inputs of the first still, for its attention maps

  def add(self, batch: dict, probabilities: np.ndarray) -> None:
    for i in np.flatnonzero(batch['valid']):
      key = (batch['video_id'][i], batch['object_id'][i], batch['expression_id'][i])
      image = visualize.denormalise(batch['frame'][i])
      prediction = probabilities[i] > 0.5
      caption = str(batch['sentence'][i])
      if self.clip_key is None:
        self.clip_key = key
      if key == self.clip_key:
        self.clip.append((int(batch['frame_index'][i]), image, prediction, caption))
      if len(self.stills) < self.count and key not in {s[0] for s in self.stills}:
        self.stills.append((key, image, prediction, caption))
        if self.first_inputs is None:
          self.first_inputs = {name: batch[name][i:i + 1] for name in MODEL_INPUTS}

  def save(self, directory: epath.Path) -> list[epath.Path]:
    if not self.stills:
      return []
    draw = lambda image, mask, caption: visualize.captioned(visualize.overlay(visualize.upscale(image),
                                                                               visualize.upscale(mask)), caption)
    saved = [visualize.save_png(directory / 'predictions.png', visualize.grid([draw(*s[1:]) for s in self.stills]))]
    frames = [draw(image, mask, caption) for _, image, mask, caption in sorted(self.clip, key=lambda c: c[0])]
    height = max(f.shape[0] for f in frames)
    frames = [np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in frames]
    saved.append(visualize.save_gif(directory / 'clip.gif', frames))
    return saved

  def save_attention(self, directory: epath.Path, model, params, batch_stats, input_size, stage: int,
                     layer: int) -> epath.Path:
    """Paper Fig. 6 for the first picture: its words' attention over the frame and the frame difference."""
    inputs = self.first_inputs
    _, captured = inference.probabilities(model, params, batch_stats, inputs, capture=True)
    maps = inference.attention_maps(jax.tree.map(np.asarray, captured), model.config, stage, layer)
    caption = self.stills[0][3]
    tokens = [t for t, m in zip(*tokenizer.pad_tokens(caption, inputs['word_mask'].shape[1])) if m]
    grid_size = (input_size[0] // 2**stage, input_size[1] // 2**stage)  # stage s works at 1/2^s of the input
    picture = visualize.attention_picture(self.stills[0][1], inputs['frame_difference'][0],
                                          {name: value[0] for name, value in maps.items()}, tokens, grid_size)
    return visualize.save_png(directory / f'attention_stage{stage}_layer{layer}.png', picture)


def evaluate_split(config, model, mesh, params, batch_stats, source, sentences,
                   pictures: _Pictures | None = None) -> list[dict]:
  """Per-sample records of this process's share of a split (`source`: a `SplitSource` of a frame store)."""
  if config.eval.protocol not in PROTOCOLS:
    raise ValueError(f'config.eval.protocol must be one of {PROTOCOLS}, got {config.eval.protocol!r}')
  if config.eval.protocol == 'reference' and config.data.mask_resize != 'bilinear_threshold':
    raise ValueError("config.eval.protocol='reference' scores against the reference's resized ground truth: set "
                     "config.data.mask_resize='bilinear_threshold' as well")
  sharding.local_batch_size(config.eval.batch_size, mesh, 'config.eval.batch_size')
  predict = _compiled_predictor(model, mesh)
  records = []
  batches = loader.eval_batches(source, sentences, input_pipeline.Preprocessing.from_config(config),
                                delta=config.data.delta, global_batch_size=config.eval.batch_size,
                                process_index=jax.process_index(), process_count=jax.process_count(),
                                num_threads=config.data.num_threads)
  total = loader.num_eval_batches(len(source), config.eval.batch_size, jax.process_count())
  name = f'{source.name}:{source.split}'
  with progress.Progress(total=total, unit='batch', desc=f'evaluate {name}', leave=False) as bar:
    for index, batch in enumerate(batches):
      inputs = sharding.global_batch({key: batch[key] for key in MODEL_INPUTS}, mesh)
      if index == 0:
        sharding.compile_together(predict, params, batch_stats, inputs, name=f'predict {name}')
      probabilities = sharding.local_rows(predict(params, batch_stats, inputs))
      records += _sample_records(source.name, batch, probabilities, config.eval.protocol)
      if pictures is not None:
        pictures.add(batch, probabilities)
      bar.update()
      if (index + 1) % max(1, total // 10) == 0:  # a log line every tenth of the split
        bar.log()
  return records


@functools.lru_cache(maxsize=4)
def _compiled_predictor(model, mesh):
  return jax.jit(functools.partial(inference.probabilities, model),
                 out_shardings=sharding.batch_sharding(mesh))


def _gather_records(records: list[dict], directory: epath.Path, tag: str) -> list[dict] | None:
  """All processes' records on process 0 (None elsewhere), through the shared work directory."""
  if jax.process_count() == 1:
    return records
  paths.write_json(directory / f'{tag}.records_{jax.process_index()}.json', records, indent=None)
  sharding.barrier(f'records {tag}')
  if jax.process_index() != 0:
    return None
  combined = []
  for process in range(jax.process_count()):
    combined += paths.read_json(directory / f'{tag}.records_{process}.json', 'Evaluation records')
  return combined


def run_evaluation(config, model, mesh, params, batch_stats, prepared: dict, table, step: int,
                   workdir: epath.Path, writer=None, pictures: int = 0) -> dict:
  """Evaluates every split of config.data.evaluate; returns {"name:split": results} (complete on process 0)."""
  sentences = input_pipeline.SentenceTable(prepare.sentences(prepared), table, config.max_words)
  directory = workdir / 'eval' / f'step_{step}'
  results, tables = {}, {}
  collector = _Pictures(pictures) if pictures and jax.process_index() == 0 else None
  for spec in config.data.evaluate:
    name, split = prepare.parse_dataset_split(spec)
    records = evaluate_split(config, model, mesh, params, batch_stats, prepared[name].split(split), sentences,
                             collector if spec == config.data.evaluate[0] else None)
    records = _gather_records(records, directory, f'{name}_{split}')
    if records is None:
      continue
    result = aggregate(name, records)
    if records and 'prediction' in records[0]:
      submission, result['submission_check'] = _write_submission(
          name, directory / f'{name}_{split}', records, prepared[name].split(split).sample_table())
      result['submission'] = str(submission)
    results[spec] = result
    layout = 'davis' if name in J_AND_F_DATA_SETS else 'a2d'
    if 'prediction' not in (records[0] if records else {}):
      rows = {spec: result, **{f'  {cue}': r for cue, r in result.get('per_cue', {}).items()}}
      rows.update({f'  {s}': r for s, r in result.get('per_set', {}).items()})
      tables[spec] = metrics.format_table(rows, layout, label=f'step {step}')
    if writer is not None:
      writer.write_scalars(step, {f'{spec}/{k}': v for k, v in result.items() if isinstance(v, (int, float))})
  if jax.process_index() == 0:
    results_file = directory / 'results.json'
    if results_file.exists():
      print(f'Replacing the earlier results in {results_file}', flush=True)
    for spec, table in tables.items():
      print(f'\n{spec} ({int(results[spec]["num_samples"])} samples)\n{table}', flush=True)
    for spec, result in results.items():
      if 'submission' in result:
        print(f'{spec}: {result["submission_check"]}: written to {result["submission"]}', flush=True)
    if collector is not None:
      saved = collector.save(workdir / 'pictures')
      if saved and config.eval.attention_maps and jax.process_count() == 1:  # one process: a local forward pass
        saved.append(collector.save_attention(workdir / 'pictures', model, params, batch_stats,
                                              (config.input_height, config.input_width),
                                              config.eval.attention_stage, config.eval.attention_layer))
      if saved:
        results['pictures'] = [str(p) for p in saved]
    paths.write_json(results_file, results)
    print(f'Results: {results_file}' + (f'; pictures: {", ".join(results["pictures"])}' if 'pictures' in results
                                        else ''), flush=True)
    logging.info('Evaluation results in %s', results_file)
  return results


def evaluation_data(config: ml_collections.ConfigDict) -> dict:
  """The data sets of config.data.evaluate, prepared (process 0 first); never the training data."""
  evaluation_only = ml_collections.ConfigDict(config.to_dict())
  evaluation_only.data.train = ''
  return sharding.process_zero_first(lambda: prepare.prepare(evaluation_only), 'evaluation data prepared')


def load_for_evaluation(config: ml_collections.ConfigDict, workdir: epath.Path,
                        step: int | None = None) -> tuple[model_dir.ModelDirectory, int]:
  """The model to evaluate and its step: a checkpoint of the work directory (parameters only), else the model
  directory of config.init.checkpoint or workdir/export."""
  model_config = LBDTConfig.from_dict(config.model)
  if config.data.train and checkpointing.has_checkpoints(workdir):
    loaded, loaded_step = checkpointing.read_trained(workdir, config, model_config, step=step,
                                                     restore_previous_if_damaged=config.train.restore_previous_if_damaged)
    print(f'Evaluating the checkpoint of step {loaded_step} in {workdir / checkpointing.CHECKPOINTS}', flush=True)
    return loaded, loaded_step
  source = paths.path(config.init.checkpoint) if config.init.checkpoint else workdir / 'export'
  if not (source / model_dir.MODEL_CONFIG_FILE).exists():
    raise FileNotFoundError(f'Nothing to evaluate: {workdir} has no checkpoint and {source} is not a model '
                            'directory (train first, or pass --config.init.checkpoint=<export or converted dir>)')
  loaded = model_dir.read(source, word_table=False)
  expected = {'input_size': [config.input_height, config.input_width], 'max_words': config.max_words}
  for key, value in expected.items():
    if loaded.manifest.get(key) is not None and list(np.atleast_1d(loaded.manifest[key])) != list(
        np.atleast_1d(value)):
      raise ValueError(f'{source} was trained with {key}={loaded.manifest[key]}, the config asks for {value}: '
                       'use the config the model was trained with')
  print(f'Evaluating the model in {source}', flush=True)
  return loaded, 0


def _with_data_words(loaded: model_dir.ModelDirectory, prepared: dict):
  """The word table to evaluate with: a model's learned table as it is; GloVe tables extended with the words of
  the evaluated data (their GloVe vectors); the data's table for a converted checkpoint without one."""
  data_table = prepare.word_table(prepared)
  if loaded.table is None:
    return data_table
  return loaded.table if loaded.table.trainable else glove.merge([loaded.table, data_table])


def evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """`--mode=evaluate`: the newest checkpoint of workdir (when the config trains), else config.init.checkpoint or
  workdir/export, on every split of config.data.evaluate; with config.eval.follow, every checkpoint as training
  writes it."""
  workdir = paths.path(workdir)
  config = batch_sizes.resolve(config, jax.device_count())  # a per-device evaluation batch → the global one
  if config.eval.follow:
    return follow(config, workdir)
  loaded, step = load_for_evaluation(config, workdir)
  prepared = evaluation_data(config)
  return _evaluate_loaded(config, loaded, step, prepared, workdir, pictures=config.eval.pictures)


def _evaluate_loaded(config, loaded: model_dir.ModelDirectory, step: int, prepared: dict, workdir: epath.Path,
                     writer=None, pictures: int = 0) -> dict:
  table = _with_data_words(loaded, prepared)
  mesh = sharding.make_mesh(config.mesh.fsdp)
  params = sharding.put({'model': loaded.variables['params'], 'word_vectors': table.vectors},
                        sharding.replicated(mesh))
  batch_stats = sharding.put(loaded.variables['batch_stats'], sharding.replicated(mesh))
  return run_evaluation(config, LBDT(loaded.model_config), mesh, params, batch_stats, prepared, table, step,
                        workdir, writer, pictures=pictures)


def follow(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """Evaluates each checkpoint of a training run once, as it appears, until training has finished; results in
  workdir/eval/step_<N>/ and TensorBoard scalars in workdir/eval. Returns the last results."""
  if not config.data.train:
    raise ValueError('config.eval.follow evaluates the checkpoints of a training run: the config must name its '
                     'training data (config.data.train)')
  prepared = evaluation_data(config)
  writer = checkpointing.metric_writer(config, workdir, 'eval')
  done = set(_evaluated_steps(workdir))
  results, waiting_since = {}, time.time()
  print(f'Following {workdir / checkpointing.CHECKPOINTS}: evaluating each new checkpoint until training has '
        f'finished ({len(done)} evaluated already)', flush=True)
  while True:
    status = checkpointing.read_training_status(workdir)
    steps = checkpointing.finished_steps(workdir)
    for step in [s for s in steps if s not in done]:
      try:
        loaded, _ = checkpointing.read_trained(workdir, config, LBDTConfig.from_dict(config.model), step=step)
      except FileNotFoundError as error:  # removed by the keep policy before it could be read
        logging.warning('Checkpoint of step %d not evaluated: %s', step, error)
        print(f'Warning: the checkpoint of step {step} was removed before it could be evaluated', flush=True)
        done.add(step)
        continue
      results = _evaluate_loaded(config, loaded, step, prepared, workdir, writer)
      writer.flush()
      done.add(step)
      waiting_since = time.time()
    if status and status['finished'] and status['total_steps'] in done:
      print(f'Training has finished at step {status["total_steps"]}: {len(done)} checkpoints evaluated', flush=True)
      return results
    if time.time() - waiting_since > config.eval.follow_timeout_minutes * 60:
      raise TimeoutError(f'No new checkpoint in {workdir / checkpointing.CHECKPOINTS} for '
                         f'{config.eval.follow_timeout_minutes} minutes and training has not finished '
                         '(config.eval.follow_timeout_minutes)')
    time.sleep(config.eval.follow_poll_seconds)


def _evaluated_steps(workdir: epath.Path) -> list[int]:
  directory = workdir / 'eval'
  if not directory.exists():
    return []
  return [int(d.name[len('step_'):]) for d in directory.iterdir()
          if d.name.startswith('step_') and d.name[len('step_'):].isdigit() and (d / 'results.json').exists()]
