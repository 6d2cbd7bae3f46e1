"""The continual-learning experiment (docs/ALGORITHMS.md 4.1, 4.5): tasks in order, the TxT accuracy matrix, RA and BTI.

For each learner: stream every task's training samples in batches of `batch_size` (`epochs` passes per task; the
first pass writes the memories), then test on every task's test set to fill row t of R (`eval_tasks='all'`; 'seen'
tests tasks 0..t and 'diagonal' task t only, leaving the other entries null, until the last row, which is always
complete: RA and BTI need only the diagonal and the last row, and testing never changes the learner). At the end

    RA  = mean_j R[T-1][j]              BTI = mean_j (R[T-1][j] - R[j][j])   (over all T; the last term is 0)

Run directory (docs/ARCHITECTURE.md): operative_config.gin, metrics.jsonl, tensorboard/, checkpoints/, results.json and
sparsity.png. With several learners (the quickstart compares two) each gets its own sub-directory and the top level
holds comparison.json and a side-by-side sparsity.png. A run is checkpointed after every task (weights, RNG and
progress as one unit, wtl_tf/rundir.py); rerunning the same command resumes after the last finished task, and
refuses to under other settings.
"""
import inspect
import math
import os
import time
from typing import Callable, Dict, List

import gin
import numpy as np
from tqdm import tqdm

from wtl_tf import plots, rundir, summaries
from wtl_tf.data import continual as continual_data
from wtl_tf.errors import ConfigError, TrainingDiverged, check_ints
from wtl_tf.models.mlp import mlp

SETTING = 'continual'


def ra_bti(acc_matrix: np.ndarray):
  """RA and BTI (fractions) from the TxT matrix R[i][j] = accuracy on task j after training task i."""
  r = np.asarray(acc_matrix, np.float64)  # Entries not tested (null) become NaN; RA and BTI never read them.
  final = r[-1]
  return float(final.mean()), float(np.mean(final - np.diag(r)))


def _build_learner(factory: Callable, model_fn: Callable, input_size: int, num_classes: int, seed: int,
                   batch_size: int):
  kwargs = {'seed': seed}
  if 'batch_size' in inspect.signature(factory).parameters:
    kwargs['batch_size'] = batch_size
  return factory(model_fn(input_size=input_size, num_classes=num_classes, seed=seed), **kwargs)


def build_learner(factory: Callable, tasks: List[continual_data.Task], model_fn: Callable, seed: int,
                  batch_size: int):
  num_classes = int(max(t.train_y.max() for t in tasks)) + 1
  return _build_learner(factory, model_fn, continual_data.input_size(tasks), num_classes, seed, batch_size)


EVAL_TASKS = ('all', 'seen', 'diagonal')


def check_eval_tasks(eval_tasks: str):
  if eval_tasks not in EVAL_TASKS:
    raise ConfigError(f'run_continual.eval_tasks must be one of {", ".join(EVAL_TASKS)}, got {eval_tasks!r}')


def tested_tasks(eval_tasks: str, t: int, num_tasks: int) -> range:
  """The tasks whose test sets are scored after training task t (row t of R)."""
  if eval_tasks == 'all' or t == num_tasks - 1:
    return range(num_tasks)
  return range(t + 1) if eval_tasks == 'seen' else range(t, t + 1)


def train_one(name: str, learner, tasks: List[continual_data.Task], workdir: str, benchmark_name: str,
              seed: int, epochs: int, batch_size: int, log_every: int, show_progress: bool,
              eval_tasks: str = 'all') -> dict:
  """Trains one learner over all tasks (resuming if a checkpoint exists) and writes its results.json."""
  check_eval_tasks(eval_tasks)
  run_dir = rundir.RunDir(workdir)
  with run_dir.lock():
    run_dir.check_identity(rundir.identity(dict(learner=learner, name=name, benchmark=benchmark_name,
                                                tasks=[t.descriptor for t in tasks], seed=seed, epochs=epochs,
                                                batch_size=batch_size)))
    run_dir.write_operative_config()
    return _train_one(run_dir, name, learner, tasks, benchmark_name, seed, epochs, batch_size, log_every,
                      show_progress, eval_tasks)


def _train_one(run_dir, name, learner, tasks, benchmark_name, seed, epochs, batch_size, log_every, show_progress,
               eval_tasks):
  workdir, ckpt_dir = run_dir.path, run_dir.file('checkpoints')
  progress = {'tasks_done': 0, 'step': 0, 'acc_matrix': [], 'curve': {'x': [], 'sparsity': []}, 'seconds': 0.0}
  resumed = run_dir.resume(learner)
  if resumed is not None:
    progress = resumed
    learner.rng.bit_generator.state = progress.pop('rng')
  finished = run_dir.results()
  if progress['tasks_done'] == len(tasks) and finished is not None:
    return finished
  if progress['tasks_done']:
    print(f'{name}: resuming after task {progress["tasks_done"]} of {len(tasks)}', flush=True)
  log = summaries.Summaries(workdir)
  batches_per_task = epochs * math.ceil(len(tasks[0].train_x) / batch_size)
  bar = tqdm(total=batches_per_task * len(tasks), initial=batches_per_task * progress['tasks_done'],
             desc=name, unit='batch', disable=not show_progress, dynamic_ncols=True, leave=True)
  step = progress['step']
  start = time.time() - progress['seconds']
  for t in range(progress['tasks_done'], len(tasks)):
    task = tasks[t]
    for epoch in range(epochs):
      # Multi-pass (Figure 4): later passes see the task's samples in a fresh, seeded order.
      order = np.arange(len(task.train_x)) if epoch == 0 else np.random.default_rng([seed, t, epoch]).permutation(
          len(task.train_x))
      for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        x, y = task.train_x[idx], task.train_y[idx]
        log_now = step % log_every == 0
        online_acc = learner.accuracy(x, y) if log_now else None  # Accuracy on the batch before learning it.
        out = learner.observe(x, y, t, first_epoch=(epoch == 0))
        loss = out.get('loss')
        if loss is not None and not math.isfinite(loss):
          bar.close()
          log.close()
          raise TrainingDiverged(f'{name}: loss became {loss} at task {t}, batch {b // batch_size}; the checkpoint '
                                 f'after task {t - 1} in {ckpt_dir} is kept. Lower the learning rates.')
        if log_now:
          sparsity = learner.sparsity()
          log.log(step, 'train', loss, online_acc, sparsity, task=t, epoch=epoch)
          progress['curve']['x'].append(t + b / len(order) / epochs + epoch / epochs)
          progress['curve']['sparsity'].append(sparsity)
          bar.set_postfix(task=t, loss=f'{loss:.3f}' if loss is not None else '-',
                          sparsity=f'{sparsity["overall"]:.3f}')
        step += 1
        bar.update(1)
    row = [None] * len(tasks)
    for j in tested_tasks(eval_tasks, t, len(tasks)):
      row[j] = learner.accuracy(tasks[j].test_x, tasks[j].test_y)
    progress['acc_matrix'].append(row)
    sparsity = learner.sparsity()
    seen = [a for a in row[:t + 1] if a is not None]
    log.log(step, 'eval', None, float(np.mean(seen)), sparsity, task=t, acc_row=row, acc_current=row[t])
    log.histograms(step, 'S(m)', learner.modulations())
    log.histograms(step, 'm', learner.named_mask_logits())
    progress.update(tasks_done=t + 1, step=step, seconds=time.time() - start)
    run_dir.save_checkpoint(learner.state(), dict(progress, rng=learner.rng.bit_generator.state))
  bar.close()
  log.close()
  ra, bti = ra_bti(progress['acc_matrix'])
  result = {
      'setting': SETTING, 'learner': name, 'dataset': benchmark_name, 'seed': seed,
      'sparsity': learner.sparsity(), 'ra': ra, 'bti': bti, 'acc_matrix': progress['acc_matrix'],
      'num_tasks': len(tasks), 'epochs': epochs, 'wall_seconds': progress['seconds'],
      'task_descriptors': [t.descriptor for t in tasks], 'sparsity_curve': progress['curve'],
  }
  run_dir.write_results(result)
  plots.sparsity_over_time({name: _by_group(progress['curve']['sparsity'])}, {name: progress['curve']['x']},
                           os.path.join(workdir, 'sparsity.png'), title=f'{benchmark_name}: sparsity per group')
  return result


def _by_group(points: List[Dict[str, float]]) -> Dict[str, List[float]]:
  groups = list(points[0]) if points else []
  return {g: [p.get(g, 0.0) for p in points] for g in groups}


@gin.configurable
def run_continual(workdir: str, benchmark: continual_data.Benchmark = gin.REQUIRED,
                  learners: Dict[str, Callable] = gin.REQUIRED, model_fn: Callable = mlp, seed: int = 0,
                  epochs: int = 1, batch_size: int = 10, log_every: int = 10, show_progress: bool = True,
                  eval_tasks: str = 'all', build_only: bool = False) -> dict:
  """Runs every learner on the benchmark; returns {learner name: results}. Prints RA, BTI and sparsity.

  `eval_tasks` ('all', 'seen' or 'diagonal') picks the test sets scored after each task but the last (module doc);
  'diagonal' makes a 100-task run's testing 50 times cheaper with the same RA and BTI.

  With `build_only`, returns {learner name: the built learner} without loading the tasks (wtl_tf/saved_run.py).
  """
  check_ints('run_continual', epochs=epochs, batch_size=batch_size)
  if not learners:
    raise ConfigError('run_continual.learners is empty: bind at least one learner')
  check_eval_tasks(eval_tasks)  # Before the data are loaded.
  if build_only:
    input_size, num_classes = benchmark.shape()
    return {name: _build_learner(factory, model_fn, input_size, num_classes, seed, batch_size)
            for name, factory in learners.items()}
  tasks = benchmark.load()
  print(f'{benchmark.name}: {len(tasks)} tasks x {len(tasks[0].train_x)} training samples, '
        f'{len(tasks[0].test_x)} test samples per task; {tasks[0].descriptor} ... {tasks[-1].descriptor}',
        flush=True)
  # Every learner is built before any training, so a bad setting fails before hours of work.
  built = {name: build_learner(factory, tasks, model_fn, seed, batch_size) for name, factory in learners.items()}
  top = rundir.RunDir(workdir)
  with top.lock():
    top.write_operative_config()
    results = {}
    for name, learner in built.items():
      run_dir = workdir if len(learners) == 1 else os.path.join(workdir, name)
      results[name] = train_one(name, learner, tasks, run_dir, benchmark.name, seed, epochs, batch_size, log_every,
                                show_progress, eval_tasks)
    print(format_table(results))
    if len(learners) > 1:
      top.write_json_atomic('comparison.json', {n: {k: r[k] for k in ('ra', 'bti', 'sparsity', 'wall_seconds')}
                                                for n, r in results.items()})
      plots.sparsity_over_time({n: _by_group(r['sparsity_curve']['sparsity']) for n, r in results.items()},
                               {n: r['sparsity_curve']['x'] for n, r in results.items()},
                               os.path.join(workdir, 'sparsity.png'), title=f'{benchmark.name}: sparsity per group')
  return results


def format_table(results: Dict[str, dict]) -> str:
  lines = [f'{"learner":<18} {"RA %":>7} {"BTI %":>7} {"sparsity %":>11} {"time s":>7}']
  for name, r in results.items():
    lines.append(f'{name:<18} {100 * r["ra"]:7.2f} {100 * r["bti"]:7.2f} {100 * r["sparsity"]["overall"]:11.2f} '
                 f'{r["wall_seconds"]:7.1f}')
  return '\n'.join(lines)
