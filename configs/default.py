"""A2D Sentences, LBDT as released (Tab. 1): ResNet-50 encoders, 320x320, the reference's training recipe.

  --config=configs/default.py            LBDT-4
  --config=configs/default.py:lbdt1      LBDT-1
  --config=configs/default.py:lbdt4,direct,delta=3      comma-separated options (the paper's ablations):

  direct          Tab. 5: no language bridge, the streams attend to each other directly
  t2s_only        Tab. 5: only T->L->S (motion into the spatial stream)
  s2t_only        Tab. 5: only S->L->T (appearance into the temporal stream)
  no_denoiser     Tab. 5: BCA without the language denoiser
  no_activator    Tab. 5: BCA without the consistency activator
  single_stream   no temporal encoder (frame only)
  paper_form      separate transfer weights per direction (the paper's text; the code shares them)
  delta=N         Tab. 6: frame interval of the frame difference
  stages=45       Tab. 7: encoder stages with LBDT modules (digits)
  adam            plain Adam with L2 weight decay, as the paper's text says (the code uses AdamW)
  reference_eval  score exactly as the official eval.py (bilinear ground truth at 320, nearest back up)
  gpu             one NVIDIA GPU of 80-141 GB per device (H100, H200): bfloat16, 32 training and 64 evaluation
                  examples per device, learning rate scaled with the global batch (square root, unverified)
  tpu             one TPU core per device, sized for a v5e's 16 GiB: bfloat16, 16 training and 32 evaluation
                  examples per device, learning rate scaled as for gpu

gpu and tpu make the global batch depend on the devices of the run (lbdt_jax/batch_sizes.py resolves it); without
them the recipe is the paper's: global batch 8, AdamW lr 1e-4, float32.

Everything else is overridable from the command line, e.g. `--config.optimizer.learning_rate=2e-4`.
"""

import ml_collections

from lbdt_jax.models import LBDTConfig

LAYERS = {'lbdt1': 1, 'lbdt4': 4}
MODEL_SWITCHES = {
    'direct': {'bridge': 'direct'},
    't2s_only': {'transfer_spatial_to_temporal': False},
    's2t_only': {'transfer_temporal_to_spatial': False},
    'no_denoiser': {'language_denoiser': False},
    'no_activator': {'consistency_activator': False},
    'single_stream': {'temporal_encoder': False},
    'paper_form': {'share_direction_weights': False},
}
# Execution settings per accelerator; none of them changes the model (a checkpoint serves any of them). The batch
# sizes are starting points, not measurements: no GPU or TPU has run lbdt-jax yet (benchmarks/accelerator_check.py
# measures them). The data loader keeps its default, all host cores (config.data.num_threads = 0): at the rates
# these batches aim for, reading and decoding frames needs many cores per accelerator (docs/performance.md).
ACCELERATORS = {
    # XLA's memory accounting of the LBDT-4 bfloat16 training step at 320x320, compiled for the CPU: 2.2 GiB at one
    # example (1.1 GB of it parameters and AdamW state) and 0.74 GiB per further example. 32 per device come to
    # about 25 GiB, within the 60 GiB JAX takes of an 80 GB H100 by default; evaluation keeps no activations for a
    # backward pass (1.1 GiB at 8 examples by the same accounting).
    'gpu': {'model': {'dtype': 'bfloat16', 'remat': False},
            'train': {'per_device_batch_size': 32}, 'eval': {'per_device_batch_size': 64},
            'optimizer': {'lr_batch_scaling': 'sqrt'}},
    # A v5e core has 16 GiB: 16 examples come to about 13 GiB by the same accounting. Recomputing the encoders'
    # activations (model.remat) did not lower it (2.2 and 2.9 GiB at 1 and 2 examples without, 2.2 and 3.0 with),
    # so it stays off. Cores with more memory (v5p 95 GiB, v4 and v6e 32 GiB) can take more examples.
    'tpu': {'model': {'dtype': 'bfloat16', 'remat': False},
            'train': {'per_device_batch_size': 16}, 'eval': {'per_device_batch_size': 32},
            'optimizer': {'lr_batch_scaling': 'sqrt'}},
}


def get_config(options: str = 'lbdt4') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(LBDTConfig().to_dict())
  config.input_height = 320
  config.input_width = 320
  config.max_words = 25
  config.data = data_config(train='a2d_sentences:train', evaluate=('a2d_sentences:test',))
  config.train = ml_collections.ConfigDict({
      'batch_size': 8,  # global, over all devices and processes
      # > 0: examples per device in each microbatch; batch_size becomes this x devices x accumulation_steps
      'per_device_batch_size': 0,
      'num_epochs': 15,
      'num_steps': 0,  # > 0 overrides num_epochs
      'accumulation_steps': 1,  # microbatches per step (gradients averaged; BatchNorm sees each microbatch)
      'batch_norm': 'global',  # statistics over the global batch; 'per_device' = PyTorch DDP without SyncBN
      'log_every_steps': 50,
      'checkpoint_every_steps': 1000,
      'keep_checkpoints': 3,
      'keep_every_steps': 0,  # also keep every N-th step's checkpoint
      'eval_every_steps': 0,  # 0: evaluate at the end only
      'max_nonfinite_in_row': 10,  # stop after this many consecutive NaN/inf steps (each one is skipped)
      'profile': False,  # a profiler trace of 5 steps into workdir (TensorBoard)
      'restore_previous_if_damaged': False,  # a damaged newest checkpoint: start from the one before (else stop)
      'tensorboard_dir': '',  # TensorBoard events; '' = the work directory
  })
  config.optimizer = ml_collections.ConfigDict({
      'name': 'adamw',  # the reference code; 'adam' = the paper's text
      'learning_rate': 1e-4,
      'weight_decay': 5e-4,
      'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,  # torch defaults
      'decay_epochs': (10, 12, 14),  # torch MultiStepLR milestones of the reference
      'decay_factor': 0.5,
      'grad_clip_norm': 0.0,  # 0: no clipping (the reference clips nothing)
      # The learning rate is for a global batch of base_batch_size; at another batch it is scaled by
      # (batch_size / base_batch_size) ** 0.5 ('sqrt') or ** 1 ('linear'), or kept ('none'). Unverified for LBDT.
      'lr_batch_scaling': 'none',
      'base_batch_size': 8,
  })
  config.eval = ml_collections.ConfigDict({
      'batch_size': 8,
      'per_device_batch_size': 0,  # > 0: batch_size becomes this x devices
      'protocol': 'original',  # score at the original frame size; 'reference' = the official eval.py
      'pictures': 0,  # > 0: draw this many predictions (and a clip) into workdir/pictures
      'attention_maps': False,  # with pictures: the first one's word attention maps (paper Fig. 6)
      'attention_stage': 5,
      'attention_layer': 0,
      'follow': False,  # --mode=evaluate beside training: evaluate each new checkpoint until training finishes
      'follow_poll_seconds': 30,
      'follow_timeout_minutes': 120,  # give up when no checkpoint appears for this long and training is not done
  })
  config.mesh = ml_collections.ConfigDict({'fsdp': 1})  # > 1: the training state split over this many devices
  config.init = ml_collections.ConfigDict({
      'imagenet': '',  # torchvision ResNet weights (.pth/.npz) for both encoders, as the paper
      'checkpoint': '',  # a model directory (export/ of a run, or --mode=convert output) to start from
  })
  apply_options(config, options)
  return config


def apply_options(config: ml_collections.ConfigDict, options: str) -> None:
  for option in filter(None, (o.strip() for o in options.split(','))):
    name, _, value = option.partition('=')
    if name in LAYERS:
      config.model.num_lbdt_layers = LAYERS[name]
    elif name in MODEL_SWITCHES:
      config.model.update(MODEL_SWITCHES[name])
    elif name == 'delta':
      config.data.delta = int(value)
    elif name == 'stages':
      config.model.lbdt_stages = tuple(int(d) for d in value)
    elif name == 'adam':
      config.optimizer.name = 'adam'
    elif name == 'reference_eval':
      config.eval.protocol = 'reference'
      config.data.mask_resize = 'bilinear_threshold'
    elif name in ACCELERATORS:
      for part, values in ACCELERATORS[name].items():
        config[part].update(values)
    else:
      raise ValueError(f'Unknown config option {option!r}: choose from {sorted(LAYERS)}, {sorted(MODEL_SWITCHES)}, '
                       f'delta=N, stages=DIGITS, adam, reference_eval, {", ".join(sorted(ACCELERATORS))}')


def data_config(train: str, evaluate: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Where the data comes from and how it is read (data_pipeline/prepare.py, data_pipeline/input_pipeline.py)."""
  return ml_collections.ConfigDict({
      'train': train,  # "<data set>:<split>"; '' for evaluation-only configs
      'evaluate': evaluate,
      'data_dir': '',  # where prepared data sets live (local or gs://); '' = ~/lbdt_jax_data
      # Release directories of the benchmarks, read by --mode=prepare (official layouts, see the README).
      'manual_dirs': {name: '' for name in ('a2d_sentences', 'jhmdb_sentences', 'ref_youtube_vos', 'ref_davis17',
                                            'mevis', 'synthetic_rvos')},
      'glove_path': '',  # glove.840B.300d.txt or .zip; '' = learned word embeddings (deterministic start)
      'delta': 6,  # frames between a frame and the frame its difference is taken with (paper: 6)
      'max_delta': 9,  # the largest delta the prepared data serves (each frame it can pick is stored)
      'prepare_splits': '',  # comma-separated: prepare only these splits ('' = all; several machines in parallel)
      'mask_resize': 'nearest',  # or 'bilinear_threshold' (the reference: bilinear, aligned corners, then > 0)
      'horizontal_flip': False,  # training augmentation; swaps "left"/"right" in the sentence with the image
      'num_threads': 0,  # threads reading and decoding examples; 0 = all cores
      'prefetch': 2,  # training batches read and put on the devices ahead of the step, in a thread
      'a2d_layout': 'release',  # or 'lists': images/, masks/, train.txt, val.txt of the official LBDT code
      'jhmdb_frames': 'all',  # or 'sample3' (MTTR/ReferFormer's 3 frames per video)
      'jhmdb_samples_file': '',  # MTTR's jhmdb_sentences_samples_metadata.json, to use exactly their frames
      'synthetic': {},  # data_pipeline.synthetic_rvos.SyntheticConfig settings (defaults where absent)
  })
