"""The few-shot experiment (docs/ALGORITHMS.md 3): meta-training, model selection, final and cross-domain tests.

Epoch e = 1..epochs is `batches_per_epoch` meta-updates on fresh tasks. After epoch e, validation runs on a fixed set
if (e % val_after == 0 and e > val_start) or e is the last epoch; an improvement after `test_start` is tested on a
fixed test set and saved as checkpoints/best.npz. The selected checkpoint (best, else last) is finally tested on
`num_final_episodes` fixed episodes (mean and 95% CI) and on every `cross_domain` dataset (Table 4). The schedule,
and where it deviates from the reference, is in docs/ALGORITHMS.md 3.3; the run directory in docs/ARCHITECTURE.md.

Tasks and sparse-MAML+ noise are pure functions of (seed, episode position), so a checkpoint (theta, BN statistics,
masks, optimizer slots, step and selection state) is all a resumed run needs; with `deterministic=True` on CPU it
ends with exactly the results.json of an uninterrupted one.
"""
import functools
import math
import os
import sys
import time
from typing import Callable, Dict, Optional

import gin
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from wtl_tf import distribute
from wtl_tf import plots
from wtl_tf import rundir
from wtl_tf import summaries
from wtl_tf.data import records
from wtl_tf.errors import ConfigError, TrainingDiverged, check_ints
from wtl_tf.learners import fewshot as fewshot_learners  # noqa: F401  (registers the learners with gin)
from wtl_tf.models.conv4 import conv4

SETTING = 'fewshot'
BEST = 'checkpoints/best.npz'  # The best validation checkpoint's weights (no optimizer state).


def mean_ci95(values) -> (float, float):
  """Mean and half-width of the normal 95% confidence interval of the mean."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()) if len(values) else float('nan'), float('nan')
  return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def evaluate(learner, episodes, batch_size: int, split: str, desc: str = '', show_progress: bool = False) -> dict:
  """Accuracy and loss of `learner` on a fixed episode set: mean, 95% CI and the per-episode accuracies."""
  dataset, steps, total = distribute.eval_batches(learner.strategy, episodes, batch_size)
  accuracies, losses = [], []
  for tasks, positions in tqdm(records.checked(dataset, f'the {desc or split} episodes'), total=steps, desc=desc,
                               unit='batch', leave=False, disable=not show_progress, dynamic_ncols=True):
    acc, loss = learner.eval_step(tasks, positions, split=split)
    accuracies.append(acc.numpy())
    losses.append(loss.numpy())
  accuracies = np.concatenate(accuracies)[:total]
  losses = np.concatenate(losses)[:total]
  mean, ci95 = mean_ci95(accuracies)
  return {'accuracy': mean, 'ci95': ci95, 'loss': float(np.mean(losses)), 'num_episodes': int(total),
          'per_episode': accuracies}


@gin.configurable
def run_fewshot(workdir: str, data=gin.REQUIRED, learner: Callable = gin.REQUIRED, model_fn: Callable = conv4,
                ways: int = 5, shots: int = 5, queries: int = 15, meta_batch_size: int = 2, epochs: int = 400,
                batches_per_epoch: int = 100, val_after: int = 5, val_start: int = 100, test_start: int = 100,
                num_val_episodes: int = 500, num_test_episodes: int = 500, num_final_episodes: int = 600,
                eval_batch_size: Optional[int] = None, cross_domain: Optional[Dict[str, object]] = None,
                train_split: str = 'train', val_split: str = 'val', test_split: str = 'test', augment: bool = False,
                seed: int = 0, eval_seed: int = 1, episodes_dir: Optional[str] = None,
                strategy: Optional[tf.distribute.Strategy] = None, deterministic: bool = False, log_every: int = 10,
                checkpoint_every: Optional[int] = None, show_progress: bool = True, build_only: bool = False):
  """Meta-trains `learner` on `data`, selects the best checkpoint by validation, tests it; returns results.json.

  Args:
    workdir: the run directory.
    data: episode source (FewShotData or SyntheticData).
    learner: factory (e.g. `@FewShotLearner`) called as learner(model_fn=..., strategy=..., seed=...).
    model_fn: backbone builder, called with input_shape, num_classes=ways and seed.
    ways, shots, queries: episode shape (train, validation, test and cross-domain).
    meta_batch_size: tasks per meta-update (2 for ConvNet rows, 1 for ResNet rows).
    epochs, batches_per_epoch: the training length (epochs x meta-updates).
    val_after, val_start, test_start: the validation schedule above.
    num_val_episodes, num_test_episodes: sizes of the fixed val and test-at-best-val sets (500 in the reference).
    num_final_episodes: size of the fixed final and cross-domain evaluation sets.
    eval_batch_size: tasks per evaluation call (independent tasks; speed only); default meta_batch_size rounded up
      to a multiple of the replicas.
    cross_domain: {name: data source} evaluated on their `test_split` with the best checkpoint (Table 4).
    augment: flip-and-crop augmentation of training episodes (off in the reference).
    seed: run seed: model init, masks, training tasks and sparse-MAML+ noise.
    eval_seed: seed of the fixed evaluation sets (shared by all run seeds).
    episodes_dir: where fixed evaluation sets are stored (default <workdir>/episodes; share it between runs).
    strategy: tf.distribute strategy (wtl_tf.distribute.make_strategy); default no distribution.
    deterministic: op determinism, one inter-op thread and one task in flight (CPU, non-XLA runs: XLA rejects
      MaxPoolGrad then); bit-identical results across processes, e.g. for a resumed run. Slower.
    log_every: steps between train records in metrics.jsonl (the progress bar updates every step).
    checkpoint_every: steps between extra checkpoints inside an epoch (None: end of epochs only).
    show_progress: tqdm progress bar.
    build_only: build the data configuration, model and learner and return them in a dict, without reading data
      or training (configuration checks).
  """
  check_ints('run_fewshot', ways=ways, shots=shots, queries=queries, meta_batch_size=meta_batch_size, epochs=epochs,
             batches_per_epoch=batches_per_epoch, val_after=val_after, num_val_episodes=num_val_episodes,
             num_test_episodes=num_test_episodes, num_final_episodes=num_final_episodes, log_every=log_every,
             checkpoint_every=checkpoint_every)
  cross_domain = dict(cross_domain or {})
  if deterministic:
    # Op determinism is not enough across processes: with ops running side by side (inter-op parallelism), some CPU
    # kernels (oneDNN and Eigen alike) split their reductions differently from run to run (measured here).
    try:
      distribute.set_threads(None, 1)
    except ValueError:
      print('warning: run_fewshot.deterministic=True: TensorFlow started before its inter-op thread pool could be '
            'set to 1, so results are exact within this process only', file=sys.stderr)
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  if meta_batch_size % replicas:
    raise ConfigError(f'run_fewshot.meta_batch_size={meta_batch_size} is not a multiple of the {replicas} replicas')
  eval_batch_size = eval_batch_size or replicas * math.ceil(meta_batch_size / replicas)
  if eval_batch_size % replicas:
    raise ConfigError(f'run_fewshot.eval_batch_size={eval_batch_size} is not a multiple of the {replicas} replicas')
  image_shape = tuple(data.image_shape)
  for name, other in cross_domain.items():
    if tuple(other.image_shape) != image_shape:
      raise ConfigError(f'cross-domain dataset {name!r} has images {tuple(other.image_shape)}, the model takes '
                       f'{image_shape}')
  built = learner(model_fn=functools.partial(model_fn, input_shape=image_shape, num_classes=ways, seed=seed),
                  strategy=strategy, seed=seed)
  built.set_global_batch(meta_batch_size)
  if deterministic:
    if built.jit_compile:
      raise ConfigError('run_fewshot.deterministic needs FewShotLearner.jit_compile=False: under op determinism XLA '
                       'refuses MaxPoolGrad')
    tf.config.experimental.enable_op_determinism()
    # Tasks running side by side made results differ between processes even with one inter-op and one intra-op
    # thread and oneDNN off (three Omniglot runs, three results); one task at a time reproduced them exactly.
    built.tasks_in_flight = 1
  if build_only:
    return {'learner': built, 'data': data, 'cross_domain': cross_domain, 'strategy': strategy, 'ways': ways,
            'shots': shots, 'queries': queries, 'meta_batch_size': meta_batch_size, 'test_split': test_split,
            'eval_seed': eval_seed, 'eval_batch_size': eval_batch_size}

  run_dir = rundir.RunDir(workdir, writer=distribute.is_chief(strategy))
  with run_dir.lock():
    run_dir.check_identity(rundir.identity(dict(
        learner=built, data=data, model_fn=model_fn, cross_domain=cross_domain, ways=ways, shots=shots,
        queries=queries, meta_batch_size=meta_batch_size, epochs=epochs, batches_per_epoch=batches_per_epoch,
        val_after=val_after, val_start=val_start, test_start=test_start, num_val_episodes=num_val_episodes,
        num_test_episodes=num_test_episodes, num_final_episodes=num_final_episodes,
        splits=(train_split, val_split, test_split), augment=augment, seed=seed, eval_seed=eval_seed,
        deterministic=deterministic)))
    run_dir.write_operative_config()
    return _run(run_dir, built, data, cross_domain, ways, shots, queries, meta_batch_size, epochs, batches_per_epoch,
                val_after, val_start, test_start, num_val_episodes, num_test_episodes, num_final_episodes,
                eval_batch_size, train_split, val_split, test_split, augment, seed, eval_seed, episodes_dir,
                deterministic, log_every, checkpoint_every, show_progress)


def _run(run_dir, built, data, cross_domain, ways, shots, queries, meta_batch_size, epochs, batches_per_epoch,
         val_after, val_start, test_start, num_val_episodes, num_test_episodes, num_final_episodes, eval_batch_size,
         train_split, val_split, test_split, augment, seed, eval_seed, episodes_dir, deterministic, log_every,
         checkpoint_every, show_progress):
  """run_fewshot once the learner is built and the run directory is held."""
  workdir, chief = run_dir.path, run_dir.writer
  out_dir = workdir if chief else os.path.join(workdir, f'.worker{distribute.worker_id(built.strategy)}')
  episodes_dir = episodes_dir or os.path.join(workdir, 'episodes')
  show_progress = show_progress and chief

  # Data first, so that a missing or malformed dataset fails before any training.
  train = data.split(train_split, ways, shots, queries, augment=augment)
  val_set = data.split(val_split, ways, shots, queries).fixed(eval_seed + 1, num_val_episodes, episodes_dir)
  test_set = data.split(test_split, ways, shots, queries).fixed(eval_seed + 2, num_test_episodes, episodes_dir)

  progress = run_dir.resume(built) or {
      'step': 0, 'epoch': 0, 'best_val': None, 'best_epoch': None, 'test_at_best': None, 'sparsity_at_best': None,
      'history': [], 'sparsity_curve': {'epoch': [], 'sparsity': []}}
  total_steps = epochs * batches_per_epoch
  finished = run_dir.results()
  if progress['step'] >= total_steps and finished is not None:
    return finished
  if progress['step']:
    print(f'{built.name}: resuming at step {progress["step"]} of {total_steps} (epoch {progress["epoch"]})',
          flush=True)

  log = summaries.Summaries(out_dir)
  try:
    _train(built, train, val_set, test_set, progress, run_dir, log, seed, meta_batch_size, epochs,
           batches_per_epoch, val_after, val_start, test_start, eval_batch_size, log_every, checkpoint_every,
           show_progress)
    result = _final(built, data, cross_domain, progress, run_dir, log, test_split, ways, shots, queries,
                    eval_seed, num_final_episodes, episodes_dir, eval_batch_size, seed, show_progress)
  finally:
    log.close()
  result['deterministic'] = deterministic
  if chief:
    run_dir.write_results(result, sort_keys=True)
    _plot_sparsity(workdir, built.name, built.group_names(),
                   f'{data.name} {ways}-way {shots}-shot: sparsity per group')
  print(format_result(result), flush=True)
  return result


def _plot_sparsity(workdir, name, group_order, title):
  """sparsity.png from the train records of metrics.jsonl (a resumed run's repeated steps: the last record wins)."""
  by_step = {r['step']: r for r in summaries.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
             if r['split'] == 'train'}
  points = [by_step[k] for k in sorted(by_step)]
  if not points:
    return
  groups = [g for g in group_order + ['overall'] if g in points[0]['sparsity']]  # Input to output, then overall.
  plots.sparsity_over_time({name: {g: [p['sparsity'].get(g, 0.0) for p in points] for g in groups}},
                           {name: [p['epoch'] for p in points]}, os.path.join(workdir, 'sparsity.png'),
                           xlabel='epoch', title=title)


def _train(learner, train, val_set, test_set, progress, run_dir, log, seed, meta_batch_size, epochs,
           batches_per_epoch, val_after, val_start, test_start, eval_batch_size, log_every, checkpoint_every,
           show_progress):
  """The epoch loop; updates `progress` in place and checkpoints it."""
  total_steps = epochs * batches_per_epoch
  step = progress['step']
  if step >= total_steps:
    return
  batches = records.checked(distribute.train_batches(learner.strategy, train, seed, meta_batch_size, start_step=step),
                            'the training episodes')
  bar = tqdm(total=total_steps, initial=step, desc=learner.name, unit='step', disable=not show_progress,
             dynamic_ncols=True)
  sparsity = learner.sparsity(position=step * meta_batch_size)['overall']
  start = time.perf_counter()
  try:
    while step < total_steps:
      tasks, positions = next(batches)
      out = learner.train_step(tasks, positions)
      loss, acc = float(out['loss']), float(out['accuracy'])
      if not math.isfinite(loss):
        raise TrainingDiverged(
            f'{learner.name}: the meta-loss became {loss} at step {step} (epoch {step // batches_per_epoch + 1}); '
            f'stopped without saving, so {run_dir.file("checkpoints/last.json")} (step {progress["step"]}) is the '
            f'last good checkpoint. Lower the learning rates or set FewShotLearner.clamp_outer_gradients.')
      step += 1
      last_position = step * meta_batch_size - 1  # An epoch's sparsity: its last task (docs/ALGORITHMS.md 1.9).
      if step % log_every == 0 or step % batches_per_epoch == 0:
        spars = learner.sparsity(position=last_position)
        sparsity = spars['overall']
        log.log(step, 'train', loss, acc, spars, epoch=step / batches_per_epoch,
                tasks_per_second=log_every * meta_batch_size / max(time.perf_counter() - start, 1e-9))
        start = time.perf_counter()
      bar.set_postfix(loss=f'{loss:.3f}', acc=f'{acc:.3f}', sparsity=f'{sparsity:.3f}', refresh=False)
      bar.update(1)
      if step % batches_per_epoch == 0:
        _end_of_epoch(learner, step // batches_per_epoch, step, last_position, val_set, test_set, progress,
                      run_dir, log, epochs, val_after, val_start, test_start, eval_batch_size, show_progress)
      elif checkpoint_every and step % checkpoint_every == 0:
        progress['step'] = step
        run_dir.save_checkpoint(learner.state(), progress)
  finally:
    bar.close()


def _end_of_epoch(learner, epoch, step, last_position, val_set, test_set, progress, run_dir, log, epochs,
                  val_after, val_start, test_start, eval_batch_size, show_progress):
  spars = learner.sparsity(position=last_position)
  progress['sparsity_curve']['epoch'].append(epoch)
  progress['sparsity_curve']['sparsity'].append(spars)
  log.histograms(step, 'S(m)', learner.modulations(position=last_position))
  log.histograms(step, 'm', learner.named_mask_logits())
  if (epoch % val_after == 0 and epoch > val_start) or epoch == epochs:
    val = evaluate(learner, val_set, eval_batch_size, 'val', desc=f'val {epoch}', show_progress=show_progress)
    record = {'epoch': epoch, 'val_accuracy': val['accuracy'], 'val_ci95': val['ci95']}
    log.log(step, 'val', val['loss'], val['accuracy'], spars, epoch=epoch, ci95=val['ci95'])
    if progress['best_val'] is None or val['accuracy'] > progress['best_val']:
      progress['best_val'] = val['accuracy']
      if epoch > test_start:
        test = evaluate(learner, test_set, eval_batch_size, 'test', desc=f'test {epoch}',
                        show_progress=show_progress)
        log.log(step, 'test', test['loss'], test['accuracy'], spars, epoch=epoch, ci95=test['ci95'])
        progress.update(best_epoch=epoch, sparsity_at_best=spars,
                        test_at_best={'accuracy': test['accuracy'], 'ci95': test['ci95'],
                                      'num_episodes': test['num_episodes']})
        record['test_accuracy'] = test['accuracy']
        run_dir.write_npz_atomic(BEST, learner.state(with_optimizers=False))
    progress['history'].append(record)
  progress.update(step=step, epoch=epoch)
  run_dir.save_checkpoint(learner.state(), progress)


def _final(learner, data, cross_domain, progress, run_dir, log, test_split, ways, shots, queries, eval_seed,
           num_final_episodes, episodes_dir, eval_batch_size, seed, show_progress) -> dict:
  """Tests the selected checkpoint on the fixed evaluation episodes, here and across domains."""
  selected = 'best' if os.path.exists(run_dir.file(BEST)) else 'last'
  if selected == 'best':
    learner.restore(run_dir.read_npz(BEST))
  sparsity = progress['sparsity_at_best'] if selected == 'best' else progress['sparsity_curve']['sparsity'][-1]
  final_set = data.split(test_split, ways, shots, queries).fixed(eval_seed, num_final_episodes, episodes_dir)
  test = evaluate(learner, final_set, eval_batch_size, 'eval', desc='final test', show_progress=show_progress)
  log.log(progress['step'], 'final_test', test['loss'], test['accuracy'], sparsity, ci95=test['ci95'],
          checkpoint=selected)
  cross, cross_ci = {}, {}
  for name, other in cross_domain.items():
    other_set = other.split(test_split, ways, shots, queries).fixed(eval_seed, num_final_episodes, episodes_dir)
    res = evaluate(learner, other_set, eval_batch_size, 'eval', desc=f'cross-domain {name}',
                   show_progress=show_progress)
    cross[name], cross_ci[name] = res['accuracy'], res['ci95']
    log.log(progress['step'], f'cross_domain/{name}', res['loss'], res['accuracy'], sparsity, ci95=res['ci95'])
  result = {
      'setting': SETTING, 'learner': learner.name, 'dataset': data.name, 'seed': seed,
      'ways': ways, 'shots': shots, 'queries': queries, 'inner_steps': learner.inner_loop.num_steps,
      'eval_inner_steps': learner.eval_inner_loop.num_steps,
      'sparsity': sparsity, 'test_accuracy': test['accuracy'], 'test_accuracy_ci95': test['ci95'],
      'num_test_episodes': test['num_episodes'], 'checkpoint': selected, 'best_epoch': progress['best_epoch'],
      'best_val_accuracy': progress['best_val'], 'test_accuracy_at_best_val': progress['test_at_best'],
      'steps': progress['step'], 'epochs': progress['epoch'], 'validation': progress['history'],
  }
  if cross_domain:
    result['cross_domain'] = cross
    result['cross_domain_ci95'] = cross_ci
  return result


def format_result(result: dict) -> str:
  lines = [f'{result["learner"]} on {result["dataset"]} {result["ways"]}-way {result["shots"]}-shot: test accuracy '
           f'{100 * result["test_accuracy"]:.2f} +- {100 * result["test_accuracy_ci95"]:.2f} % '
           f'({result["num_test_episodes"]} episodes, {result["checkpoint"]} checkpoint), sparsity '
           f'{100 * result["sparsity"]["overall"]:.2f} %']
  for name, acc in result.get('cross_domain', {}).items():
    lines.append(f'  cross-domain {name}: {100 * acc:.2f} +- {100 * result["cross_domain_ci95"][name]:.2f} %')
  return '\n'.join(lines)
