"""Evaluation: `evaluate(config, workdir)` (`--mode=evaluate`) and the evaluations during training.

For every "<data set>:<split>" of `config.data.evaluate`, every example is predicted exactly once across processes
(padding is dropped by the `valid` flag), the probability map is brought to the original frame size and scored:

  A2D / J-HMDB / synthetic   the paper's P@0.5..0.9, mAP (0.50:0.05:0.95), overall and mean IoU, and COCO mask AP
                             (pycocotools, as MTTR/ReferFormer report); per cue kind on the synthetic set.
                             `config.eval.protocol='reference'` scores exactly as the official eval.py does instead
                             (prediction and bilinear-resized ground truth at the input size, nearest back up).
  Ref-DAVIS17                J, F and J&F of the DAVIS 2017 toolkit, per expression set and averaged over the four.
  Refer-YouTube-VOS valid    no masks: PNGs Annotations/<video>/<expression_id>/<frame>.png zipped for codalab.

Results go to workdir/eval/step_<N>/results.json and to the metric writer, and are printed as tables in the
paper's layout. With several processes each writes its samples' scores next to it and process 0 combines them.
"""

import functools
import json
import os
import zipfile

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from pycocotools import mask as mask_utils

from data_pipeline import glove, input_pipeline, prepare, tokenizer
from lbdt_jax import metrics, sharding, visualize
from lbdt_jax.models import embed_words

MODEL_INPUTS = ('frame', 'frame_difference', 'word_ids', 'word_mask')
PROTOCOLS = ('original', 'reference')


def predict_probabilities(model, params, batch_stats, batch, capture: bool = False):
  """Foreground probabilities [B, H, W] at the input size (float32); with `capture`, also the model's
  intermediates (attention weights included). params: {'model': ..., 'word_vectors': [V, E]}."""
  words = embed_words(params['word_vectors'], batch['word_ids'])
  variables = {'params': params['model'], 'batch_stats': batch_stats}
  inputs = (batch['frame'], batch['frame_difference'], words, batch['word_mask'])
  if capture:
    logits, captured = model.apply(variables, *inputs, train=False, mutable=['intermediates'])
    return jax.nn.sigmoid(logits.astype(jnp.float32)), captured['intermediates']
  return jax.nn.sigmoid(model.apply(variables, *inputs, train=False).astype(jnp.float32))


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
    if name == 'ref_davis17':
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


def _write_submission(directory: str, records: list[dict]) -> str:
  """The codalab zip of Refer-YouTube-VOS: Annotations/<video>/<expression_id>/<frame>.png (0/255)."""
  path = os.path.join(directory, 'submission.zip')
  os.makedirs(directory, exist_ok=True)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
    for r in records:
      png = cv2.imencode('.png', _from_rle(r['prediction']).astype(np.uint8) * 255)[1].tobytes()
      archive.writestr(f'Annotations/{r["video_id"]}/{r["expression_id"]}/{r["frame_index"]:05d}.png', png)
  return path


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

  def save(self, directory: str) -> list[str]:
    if not self.stills:
      return []
    draw = lambda image, mask, caption: visualize.captioned(visualize.overlay(visualize.upscale(image),
                                                                               visualize.upscale(mask)), caption)
    paths = [visualize.save_png(os.path.join(directory, 'predictions.png'),
                                visualize.grid([draw(*s[1:]) for s in self.stills]))]
    frames = [draw(image, mask, caption) for _, image, mask, caption in sorted(self.clip, key=lambda c: c[0])]
    height = max(f.shape[0] for f in frames)
    frames = [np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in frames]
    paths.append(visualize.save_gif(os.path.join(directory, 'clip.gif'), frames))
    return paths

  def save_attention(self, directory: str, model, params, batch_stats, model_config, input_size, stage: int,
                     layer: int) -> str:
    """Paper Fig. 6 for the first picture: its words' attention over the frame and the frame difference."""
    from lbdt_jax import predict  # pylint: disable=import-outside-toplevel  (predict imports this module)
    inputs = self.first_inputs
    _, captured = predict_probabilities(model, params, batch_stats, inputs, capture=True)
    caption = self.stills[0][3]
    tokens = [t for t, m in zip(*tokenizer.pad_tokens(caption, inputs['word_mask'].shape[1])) if m]
    grid = predict.attention_picture(captured, 0, model_config, input_size, self.stills[0][1],
                                     inputs['frame_difference'][0], tokens, stage, layer)
    return visualize.save_png(os.path.join(directory, f'attention_stage{stage}_layer{layer}.png'), grid)


def evaluate_split(config, model, mesh, params, batch_stats, builder, split: str, sentences,
                   pictures: _Pictures | None = None) -> list[dict]:
  """Per-sample records of this process's share of the split."""
  if config.eval.protocol not in PROTOCOLS:
    raise ValueError(f'config.eval.protocol must be one of {PROTOCOLS}, got {config.eval.protocol!r}')
  if config.eval.protocol == 'reference' and config.data.mask_resize != 'bilinear_threshold':
    raise ValueError("config.eval.protocol='reference' scores against the reference's resized ground truth: set "
                     "config.data.mask_resize='bilinear_threshold' as well")
  sharding.local_batch_size(config.eval.batch_size, mesh, 'config.eval.batch_size')
  predict = _compiled_predictor(model, mesh)
  records = []
  batches = input_pipeline.eval_batches(builder, split, sentences, input_pipeline.Preprocessing.from_config(config),
                                        global_batch_size=config.eval.batch_size,
                                        process_index=jax.process_index(), process_count=jax.process_count())
  for index, batch in enumerate(batches):
    inputs = sharding.global_batch({key: batch[key] for key in MODEL_INPUTS}, mesh)
    if index == 0:
      sharding.compile_together(predict, params, batch_stats, inputs, name=f'predict {builder.name}:{split}')
    probabilities = sharding.local_rows(predict(params, batch_stats, inputs))
    records += _sample_records(builder.name, batch, probabilities, config.eval.protocol)
    if pictures is not None:
      pictures.add(batch, probabilities)
  return records


@functools.lru_cache(maxsize=4)
def _compiled_predictor(model, mesh):
  return jax.jit(functools.partial(predict_probabilities, model),
                 out_shardings=sharding.batch_sharding(mesh))


def _gather_records(records: list[dict], directory: str, tag: str) -> list[dict] | None:
  """All processes' records on process 0 (None elsewhere), through the shared work directory."""
  if jax.process_count() == 1:
    return records
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f'{tag}.records_{jax.process_index()}.json'), 'w') as f:
    json.dump(records, f)
  sharding.barrier(f'records {tag}')
  if jax.process_index() != 0:
    return None
  combined = []
  for process in range(jax.process_count()):
    with open(os.path.join(directory, f'{tag}.records_{process}.json')) as f:
      combined += json.load(f)
  return combined


def run_evaluation(config, model, mesh, params, batch_stats, prepared: dict, table, step: int, workdir: str,
                   writer=None, pictures: int = 0) -> dict:
  """Evaluates every split of config.data.evaluate; returns {"name:split": results} (complete on process 0)."""
  sentences = input_pipeline.SentenceTable(prepare.sentences(prepared), table, config.max_words)
  directory = os.path.join(workdir, 'eval', f'step_{step}')
  results, tables = {}, {}
  collector = _Pictures(pictures) if pictures and jax.process_index() == 0 else None
  for spec in config.data.evaluate:
    name, split = prepare.parse_dataset_split(spec)
    records = evaluate_split(config, model, mesh, params, batch_stats, prepared[name], split, sentences,
                             collector if spec == config.data.evaluate[0] else None)
    records = _gather_records(records, directory, f'{name}_{split}')
    if records is None:
      continue
    result = aggregate(name, records)
    if records and 'prediction' in records[0]:
      result['submission'] = _write_submission(os.path.join(directory, f'{name}_{split}'), records)
    results[spec] = result
    layout = 'davis' if name == 'ref_davis17' else 'a2d'
    if 'prediction' not in (records[0] if records else {}):
      rows = {spec: result, **{f'  {cue}': r for cue, r in result.get('per_cue', {}).items()}}
      rows.update({f'  {s}': r for s, r in result.get('per_set', {}).items()})
      tables[spec] = metrics.format_table(rows, layout, label=f'step {step}')
    if writer is not None:
      writer.write_scalars(step, {f'{spec}/{k}': v for k, v in result.items() if isinstance(v, (int, float))})
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
    for spec, table in tables.items():
      print(f'\n{spec} ({int(results[spec]["num_samples"])} samples)\n{table}', flush=True)
    for spec, result in results.items():
      if 'submission' in result:
        print(f'{spec}: {result["num_samples"]} masks written to {result["submission"]}', flush=True)
    if collector is not None:
      paths = collector.save(os.path.join(workdir, 'pictures'))
      if paths and config.eval.attention_maps and jax.process_count() == 1:  # one process: a local forward pass
        paths.append(collector.save_attention(os.path.join(workdir, 'pictures'), model, params, batch_stats,
                                              model.config, (config.input_height, config.input_width),
                                              config.eval.attention_stage, config.eval.attention_layer))
      if paths:
        print('Pictures: ' + ', '.join(paths), flush=True)
        results['pictures'] = paths
    logging.info('Evaluation results in %s', os.path.join(directory, 'results.json'))
  return results


def evaluate_trained(config, trainer, state, writer, step: int, workdir: str, final: bool = False) -> dict:
  """The evaluation during training (pictures with the final one)."""
  return run_evaluation(config, trainer.model, trainer.mesh, state.params, state.batch_stats, trainer.prepared,
                        trainer.table, step, workdir, writer, pictures=config.eval.pictures if final else 0)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=evaluate`: the latest checkpoint of workdir (when the config trains), else config.init.checkpoint or
  workdir/export (an exported or converted model directory), on every split of config.data.evaluate."""
  from lbdt_jax import checkpointing, convert, train  # pylint: disable=import-outside-toplevel  (cycle)
  workdir = os.path.abspath(workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  if config.data.train and os.path.isdir(checkpoints) and os.listdir(checkpoints):
    trainer = train.build_trainer(config)
    manager = checkpointing.manager(workdir, config)
    state, step = checkpointing.restore_latest(manager, trainer.state, trainer.state_shardings)
    manager.close()
    if step is not None:
      print(f'Evaluating the checkpoint of step {step} in {checkpoints}', flush=True)
      return run_evaluation(config, trainer.model, trainer.mesh, state.params, state.batch_stats, trainer.prepared,
                            trainer.table, step, workdir, pictures=config.eval.pictures)
  source = config.init.checkpoint or os.path.join(workdir, 'export')
  if not os.path.isfile(os.path.join(source, 'model_config.json')):
    raise FileNotFoundError(f'Nothing to evaluate: {workdir} has no checkpoint and {source} is not a model '
                            'directory (train first, or pass --config.init.checkpoint=<export or converted dir>)')
  manifest_path = os.path.join(source, checkpointing.MANIFEST_FILE)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    expected = {'input_size': [config.input_height, config.input_width], 'max_words': config.max_words}
    for key, value in expected.items():
      if manifest.get(key) is not None and list(np.atleast_1d(manifest[key])) != list(np.atleast_1d(value)):
        raise ValueError(f'{source} was trained with {key}={manifest[key]}, the config asks for {value}: '
                         'use the config the model was trained with')
  prepared = train.prepare_data(config)
  model_config, variables = convert.load_converted(source)
  table = prepare.word_table(prepared)
  exported_table = os.path.join(source, 'word_table.npz')
  if os.path.exists(exported_table):
    exported = glove.WordTable.load(exported_table)
    table = exported if exported.trainable else prepare.merge([exported, table])
  mesh = sharding.make_mesh(config.mesh.model)
  params = sharding.put({'model': variables['params'], 'word_vectors': table.vectors}, sharding.replicated(mesh))
  batch_stats = sharding.put(variables['batch_stats'], sharding.replicated(mesh))
  print(f'Evaluating the model in {source}', flush=True)
  return run_evaluation(config, train.LBDT(model_config), mesh, params, batch_stats, prepared, table, 0, workdir,
                        pictures=config.eval.pictures)
