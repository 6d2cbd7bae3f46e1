"""The online-learning experiment (OSAKA / continual-MAML, docs/ALGORITHMS.md 5, Table 6).

    1. data: OSAKA's Omniglot order (`--option split=osaka`), MNIST and Fashion-MNIST, converted on first use;
    2. pre-training (optional, cached and shared across stream seeds; wtl_tf/experiments/online_pretrain.py);
    3. the stream: T steps of 50 images; at every step the learner's accuracy is measured BEFORE it learns from the
       step (step 0 scores 0, as in OSAKA); the learner then adapts / meta-updates (wtl_tf/learners/online/cmaml.py and
       baselines.py).

Cumulative accuracy = the mean of the per-step accuracies over all T steps; per-dataset accuracy = the same mean over
the steps of each mode (Omniglot, MNIST, Fashion-MNIST).

The run directory (docs/ARCHITECTURE.md) adds stream.npz (every step's accuracy, loss, mode, true switch, detected
boundary and meta-update) and online_accuracy.png. A checkpoint holds the whole learner state (fast weights and
buffered steps included) and the per-step records; the stream is a pure function of (seed, step), so a resumed run
sees exactly the steps it would have.
"""
import functools
import math
import os
import time
from typing import Callable, Dict, List, Optional

import gin
import numpy as np
from tqdm import tqdm

from wtl_tf import modulation as modulation_lib
from wtl_tf import plots, rundir, summaries
from wtl_tf.data import osaka
from wtl_tf.data import prepare
from wtl_tf.data import records
from wtl_tf.errors import ConfigError, TrainingDiverged, check_ints
from wtl_tf.experiments import online_pretrain
from wtl_tf.models.conv4 import conv4

SETTING = 'online'
TRACE_KEYS = ('accuracy', 'loss', 'mode', 'switch', 'tbd', 'meta_update')  # Recorded at every stream step.
OSAKA_OMNIGLOT_OPTIONS = {'split': 'osaka'}


@gin.register
def osaka_convnet(seed: int = 0, hidden_size: int = 64, first_conv_by_patches: bool = True):
  """OSAKA's ConvNet (docs/ALGORITHMS.md 2.4): ConvNet-4 with biases on 28x28x1, 64 features, 10 outputs.

  `first_conv_by_patches` computes the 1-channel first convolution as patches times kernel (the same function, see
  `layers.Conv2DByPatches`): TensorFlow's filter gradient for it was the slowest kernel of the step on CPU (figures in
  docs/PERFORMANCE.md).
  """
  return conv4(input_shape=osaka.IMAGE_SHAPE, num_classes=10, hidden_size=hidden_size, seed=seed,
               first_conv_by_patches=first_conv_by_patches)


def load_specs(omniglot_records: Optional[str] = None, mnist_records: Optional[str] = None,
               fashion_mnist_records: Optional[str] = None) -> Dict[str, records.DatasetSpec]:
  """The three datasets of the stream; a missing one is a DataError naming the stream mode it feeds."""
  specs = {}
  for name, records_dir, options in (('omniglot', omniglot_records, OSAKA_OMNIGLOT_OPTIONS),
                                     ('mnist', mnist_records, None), ('fashion_mnist', fashion_mnist_records, None)):
    try:
      if records_dir:  # An explicit conversion is used as given.
        specs[name] = records.DatasetSpec.load(records_dir)
      else:
        specs[name] = prepare.ensure_records(name, options=options)
    except records.DataError as e:
      raise records.DataError(f'the OSAKA stream needs {name} (its "{name}" mode): {e}') from None
  split = (specs['omniglot'].raw.get('options') or {}).get('split')
  if split != 'osaka':
    print(f'warning: the Omniglot records in {specs["omniglot"].root} were converted with split={split!r}, not '
          f'split=osaka: class order and pixel convention may differ from OSAKA\'s', flush=True)
  return specs


def per_dataset_accuracy(accuracy: np.ndarray, modes: np.ndarray) -> Dict[str, Optional[float]]:
  return {name: (float(np.mean(accuracy[modes == m])) if np.any(modes == m) else None)
          for m, name in enumerate(osaka.MODE_NAMES)}


def boundary_detection(detected: np.ndarray, switches: np.ndarray) -> Dict[str, Optional[float]]:
  """Precision and recall of the detected task boundaries against the true switches (step 0 excluded)."""
  detected, switches = detected[1:].astype(bool), switches[1:].astype(bool)
  hits = int(np.sum(detected & switches))
  return {'detected': int(detected.sum()), 'true_switches': int(switches.sum()),
          'precision': hits / int(detected.sum()) if detected.any() else None,
          'recall': hits / int(switches.sum()) if switches.any() else None}


def _window_mean(values: List[float]) -> Optional[float]:
  finite = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.mean(finite)) if finite else None


@gin.configurable
def run_online(workdir: str, learner: Callable = gin.REQUIRED, p: float = 0.98, num_steps: int = 10000, seed: int = 0,
               pretraining: Optional[online_pretrain.Pretraining] = None, pretrain_cache: Optional[str] = None,
               model_fn: Callable = osaka_convnet, omniglot_records: Optional[str] = None,
               mnist_records: Optional[str] = None, fashion_mnist_records: Optional[str] = None,
               scale_mnist: bool = False, log_every: int = 100, checkpoint_every: int = 500,
               show_progress: bool = True, build_only: bool = False) -> dict:
  """Pre-trains (if `pretraining`), runs the OSAKA stream and writes the run directory; returns results.json.

  Args:
    workdir: the run directory.
    learner: a learner factory, called as learner(model_fn=..., seed=...) (e.g. `@c_maml/ContinualMAML`).
    p: probability of staying in the current task at each step (0.98 or 0.9 in Table 6).
    num_steps: T, the stream length.
    seed: the stream seed (the schedule of switches, tasks and images). The model and mask initialisation and the
      pre-training use `pretraining.seed`, so all seeds share one pre-trained model (without pre-training, the
      initialisation uses `seed`).
    pretraining: OSAKA's MAML pre-training settings, or None (online Adam starts from a random init).
    pretrain_cache: where pre-trained models are cached (default $WTL_PRETRAIN_DIR or ~/.cache/wtl_tf/pretrained).
    model_fn: builds the network, called with seed=.
    omniglot_records, mnist_records, fashion_mnist_records: prepared records (default: the cache, converting raw data
      from $WTL_DATA_DIR on first use; Omniglot with `--option split=osaka`).
    scale_mnist: put MNIST/Fashion-MNIST in [0, 1] (OSAKA keeps them at 0-255, docs/ALGORITHMS.md gotcha 17).
    log_every: steps between metrics.jsonl / TensorBoard records.
    checkpoint_every: steps between checkpoints.
    build_only: return {'learner': the built learner} without reading data or training (wtl_tf/saved_run.py).
  """
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
    raise ConfigError(f'run_online.num_steps must be a positive int: the stream is empty with num_steps={num_steps!r}')
  if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
    raise ConfigError(f'run_online.p must be a probability in [0, 1], got {p!r}')
  check_ints('run_online', log_every=log_every, checkpoint_every=checkpoint_every)
  # The model and mask initialisation belong to the pre-training (shared by every stream seed, as in OSAKA); without
  # pre-training they follow the stream seed.
  init_seed = pretraining.seed if pretraining is not None else seed
  the_learner = learner(model_fn=functools.partial(model_fn, seed=init_seed), seed=init_seed)
  if build_only:
    return {'learner': the_learner, 'image_shape': osaka.IMAGE_SHAPE, 'scale_mnist': scale_mnist}
  specs = load_specs(omniglot_records, mnist_records, fashion_mnist_records)
  stream = osaka.OsakaStream(specs['omniglot'], specs['mnist'], specs['fashion_mnist'], seed=seed, p=float(p),
                             num_steps=num_steps, scale_mnist=scale_mnist)
  name = the_learner.name
  print(f'{name}: OSAKA stream, p={p}, T={num_steps}, seed {seed}: {int(stream.task_index[-1]) + 1} tasks, modes '
        f'{np.bincount(stream.task_modes(), minlength=3).tolist()} (Omniglot, MNIST, Fashion-MNIST)', flush=True)
  run_dir = rundir.RunDir(workdir)
  with run_dir.lock():
    run_dir.check_identity(rundir.identity(dict(
        learner=the_learner, p=float(p), seed=int(seed), num_steps=num_steps, pretraining=pretraining,
        model_fn=model_fn, scale_mnist=scale_mnist)))
    run_dir.write_operative_config()
    log = summaries.Summaries(workdir)
    try:
      return _run(run_dir, the_learner, stream, specs, pretraining, pretrain_cache, p, seed, log, log_every,
                  checkpoint_every, show_progress)
    finally:
      log.close()


def _run(run_dir, learner, stream, specs, pretraining, pretrain_cache, p, seed, log, log_every, checkpoint_every,
         show_progress):
  name, num_steps = learner.name, stream.num_steps
  ckpt_dir = run_dir.file('checkpoints')
  progress = run_dir.resume(learner)
  if progress is not None:
    learner.restore_stream_info(progress.pop('learner_stream'))
  finished = run_dir.results()
  if progress and progress['step'] == num_steps and finished is not None:
    return finished
  pretrain_info = None
  if pretraining is not None:
    if progress is None:
      pretrain_info = online_pretrain.pretrain(learner, specs['omniglot'], pretraining, pretrain_cache,
                                               show_progress, log)
    else:  # The checkpoint already holds the (pre-trained, then streamed) model.
      pretrain_info = progress['pretrain']
  if progress is None:
    progress = {'step': 0, 'seconds': 0.0, 'trace': {k: [] for k in TRACE_KEYS},
                'curve': {'step': [], 'sparsity': [], 'accuracy': []},
                'pretrain': _pretrain_summary(pretrain_info)}
  else:
    print(f'{name}: resuming the stream at step {progress["step"]} of {num_steps}', flush=True)
  trace = progress['trace']
  start_step = progress['step']
  start_time = time.time() - progress['seconds']
  bar = tqdm(total=num_steps, initial=start_step, desc=name, unit='step', disable=not show_progress,
             dynamic_ncols=True)
  window = []
  loop_start = time.time()
  for element in stream.dataset(start=start_step):
    step = int(element.step)
    out = learner.observe(element.images, element.labels)
    loss = out['loss']
    if loss is not None and not math.isfinite(loss):
      bar.close()
      raise TrainingDiverged(f'{name}: the loss became {loss} at stream step {step}; the checkpoint at step '
                             f'{progress["step"]} in {ckpt_dir} is kept. Lower the learning rates.')
    for key, value in (('accuracy', out['accuracy']), ('loss', loss), ('mode', int(element.mode)),
                       ('switch', bool(element.task_switch)), ('tbd', bool(out['tbd'])),
                       ('meta_update', bool(out['meta_update']))):
      trace[key].append(value)
    window.append(out)
    done = step + 1
    if done % log_every == 0 or done == num_steps:
      _log(log, learner, progress, window, done, element)
      accuracy = np.asarray(trace['accuracy'])
      bar.set_postfix(acc=f'{np.mean(accuracy):.3f}', sparsity=f'{progress["curve"]["sparsity"][-1]["overall"]:.3f}',
                      meta_updates=int(np.sum(trace['meta_update'])))
      window = []
    if done % checkpoint_every == 0 or done == num_steps:
      progress.update(step=done, seconds=time.time() - start_time)
      run_dir.save_checkpoint(learner.state(), dict(progress, learner_stream=learner.stream_info()))
    bar.update(1)
  bar.close()
  return _finish(run_dir, learner, stream, progress, p, seed, time.time() - loop_start, start_step)


def _pretrain_summary(info):
  if info is None:
    return None
  return {k: info.get(k) for k in ('directory', 'best_epoch', 'best_val_accuracy', 'seconds', 'reused')} | {
      'epochs': len(info.get('history', []))}


def _log(log, learner, progress, window, done, element):
  trace = progress['trace']
  sparsity = learner.sparsity()
  window_acc = _window_mean([o['accuracy'] for o in window])
  extra = {'cumulative_accuracy': float(np.mean(trace['accuracy'])), 'task': int(element.task_index),
           'mode': osaka.MODE_NAMES[int(element.mode)], 'meta_updates': int(np.sum(trace['meta_update'])),
           'detected_boundaries': int(np.sum(trace['tbd']))}
  if isinstance(learner.modulation, modulation_lib.PerTensorStepSize):
    extra['step_sizes'] = learner.step_size_values()  # C-MAML's learned per-tensor step sizes.
  log.log(done, 'stream', _window_mean([o['loss'] for o in window]), window_acc, sparsity, **extra)
  mods = learner.modulations()
  if mods:
    log.histograms(done, 'S(m)', mods)
    log.histograms(done, 'm', learner.named_mask_logits())
  progress['curve']['step'].append(done)
  progress['curve']['sparsity'].append(sparsity)
  progress['curve']['accuracy'].append(window_acc)


def _finish(run_dir, learner, stream, progress, p, seed, session_seconds, start_step):
  workdir = run_dir.path
  trace = progress['trace']
  accuracy = np.asarray(trace['accuracy'], np.float64)
  modes = np.asarray(trace['mode'], np.int64)
  switches, detected = np.asarray(trace['switch']), np.asarray(trace['tbd'])
  timings = {k: float(v) for k, v in getattr(learner, 'timings', {}).items()}
  counts = dict(getattr(learner, 'counts', {}))
  steps_timed = stream.num_steps - start_step
  result = {
      'setting': SETTING, 'learner': learner.name, 'dataset': 'osaka(omniglot, mnist, fashion_mnist)',
      'seed': int(seed), 'p': float(p), 'num_steps': stream.num_steps,
      'cumulative_accuracy': float(accuracy.mean()),
      'per_dataset': per_dataset_accuracy(accuracy, modes),
      'steps_per_dataset': {name: int(np.sum(modes == m)) for m, name in enumerate(osaka.MODE_NAMES)},
      'sparsity': learner.sparsity(),
      'num_tasks': int(stream.task_index[-1]) + 1,
      'meta_updates': int(np.sum(trace['meta_update'])),
      'boundary_detection': boundary_detection(detected, switches),
      'pretraining': progress['pretrain'],
      'wall_seconds': progress['seconds'],
      'stream_steps_per_second': steps_timed / session_seconds if session_seconds > 0 else None,
      'resumed_at_step': start_step or None,
      'timings_seconds': timings, 'timing_counts': counts,
      'step_sizes': learner.step_size_values(),
      'sparsity_curve': progress['curve'],
  }
  run_dir.write_npz_atomic('stream.npz', dict(
      accuracy=accuracy, modes=modes, switches=switches, detected=detected,
      meta_update=np.asarray(trace['meta_update']),
      loss=np.array([np.nan if v is None else v for v in trace['loss']], np.float64)), compressed=True)
  run_dir.write_results(result)
  curve = progress['curve']
  groups = [g for g in (curve['sparsity'][0] if curve['sparsity'] else {}) if g != 'overall']
  # A sparsity panel only for per-coordinate masks (C-MAML's per-tensor step sizes are never exactly 0).
  masked = any(np.size(s) > 1 for s in learner.modulations().values())
  plots.online_accuracy(accuracy, modes, switches, detected, os.path.join(workdir, 'online_accuracy.png'),
                        title=f'{learner.name}, OSAKA p={p}, seed {seed}: cumulative accuracy {accuracy.mean():.3f}',
                        sparsity_steps=curve['step'] if masked else None,
                        sparsity={g: [s[g] for s in curve['sparsity']] for g in groups + ['overall']})
  print(format_result(result), flush=True)
  return result


def format_result(r: dict) -> str:
  per = ', '.join(f'{k} {v:.4f}' if v is not None else f'{k} -' for k, v in r['per_dataset'].items())
  bd = r['boundary_detection']
  rate = r['stream_steps_per_second']
  return (f'{r["learner"]}: cumulative accuracy {r["cumulative_accuracy"]:.4f} ({per}); sparsity '
          f'{r["sparsity"]["overall"]:.4f}; {r["meta_updates"]} meta-updates, {bd["detected"]} detected / '
          f'{bd["true_switches"]} true switches; ' + (f'{rate:.2f} steps/s' if rate else ''))
