"""Stream steps per second of the online learners (C-MAML, sparse-C-MAML, ...), and where the time goes.

Run through tools/benchmark.py:

  python tools/benchmark.py online [--rows=p098_c_maml,p098_sparse_c_maml,p090_c_maml,p090_sparse_c_maml]
                                   [--steps=300] [--warmup=30] [--intra_op_threads=N] [--gin_param=B ...]

Each row (a gin file gin/online/<row>.gin, so the learner has exactly the Table-6 settings) runs in a fresh process:
the real OSAKA stream of that row's p (records converted on first use, see wtl_tf/data/prepare.py), a model without
pre-training (with the `--gin_param` bindings on top, e.g. `InnerLoop.unroll=False` or
`osaka_convnet.first_conv_by_patches=False` to measure what those speed-ups bring), `warmup` untimed steps
(tracing), then `steps` timed steps of `learner.observe`. It reports stream steps per second, the projected time of
a 10000-step stream, and the wall time per step split into evaluation (accuracy before adapting), adaptation (K
inner steps), detection (the loss after adapting), meta-update (per meta-update and per task pair), buffer writes
and the rest (input pipeline, Python, logging-free loop overhead).

The meta-update cost per stream step hardly depends on how well boundaries are detected: a buffer of n steps gives
n - ceil(n/2) task pairs, so about half a task pair is trained per buffered step whenever the buffer is flushed.
Without pre-training the detector fires differently than in a real run, but the cost per step stays representative.
"""
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROWS = 'p098_c_maml,p098_sparse_c_maml,p090_c_maml,p090_sparse_c_maml'


def bench_online_one(row: str, steps: int, warmup: int, intra_op_threads=None, gin_params=()) -> dict:
  """One row in this process: steps/s and the per-phase breakdown (ms per stream step)."""
  import functools  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
  from wtl_tf import main  # pylint: disable=g-import-not-at-top
  from wtl_tf.data import osaka  # pylint: disable=g-import-not-at-top
  from wtl_tf.experiments import online  # pylint: disable=g-import-not-at-top
  main.parse_config([os.path.join(ROOT, 'gin', 'online', f'{row}.gin')], list(gin_params))
  p = gin.query_parameter('run_online.p')
  learner = gin.query_parameter('run_online.learner').scoped_configurable_fn(
      model_fn=functools.partial(online.osaka_convnet, seed=0), seed=0)
  specs = online.load_specs()
  stream = osaka.OsakaStream(specs['omniglot'], specs['mnist'], specs['fashion_mnist'], seed=0, p=p,
                             num_steps=warmup + steps)
  elements = iter(stream.dataset())
  for _ in range(warmup):
    element = next(elements)
    learner.observe(element.images, element.labels)
  if hasattr(learner, '_meta_update'):  # Trace and run the meta-update once, then undo it (kept out of the timing).
    saved, buffered = learner.state(), learner.buffered
    learner._meta_update(max(buffered, 1))  # pylint: disable=protected-access
    learner.restore(saved)
    learner.buffered = buffered
  learner.timings = {k: 0.0 for k in learner.timings}
  learner.counts = {k: 0 for k in learner.counts}
  start = time.perf_counter()
  meta_tasks = 0
  for _ in range(steps):
    element = next(elements)
    out = learner.observe(element.images, element.labels)
    meta_tasks += out.get('meta_tasks', 0)
  seconds = time.perf_counter() - start
  per_step = {k: 1000.0 * v / steps for k, v in learner.timings.items()}
  per_step['other'] = 1000.0 * seconds / steps - sum(per_step.values())
  meta_updates = learner.counts.get('meta_update', 0)
  return {
      'row': row, 'p': p, 'inner_steps': learner.inner_loop.num_steps, 'steps': steps,
      'steps_per_second': steps / seconds, 'minutes_per_10000_steps': seconds / steps * 10000 / 60,
      'ms_per_step': per_step, 'meta_updates': meta_updates, 'meta_task_pairs': meta_tasks,
      'ms_per_meta_task_pair': (1000.0 * learner.timings.get('meta_update', 0.0) / meta_tasks) if meta_tasks else None,
      'ms_per_adaptation': 1000.0 * learner.timings['adaptation'] / max(learner.counts['adaptation'], 1),
      'intra_op_threads': intra_op_threads, 'gin_params': list(gin_params),
  }


def format_online_table(rows) -> str:
  phases = ('evaluation', 'adaptation', 'detection', 'meta_update', 'buffer', 'other')
  lines = [f'\n{"row":<22} {"K":>3} {"steps/s":>8} {"min/10k":>8}  ' + ' '.join(f'{p[:10]:>10}' for p in phases)
           + f' {"ms/pair":>8}',
           f'{"":<22} {"":>3} {"":>8} {"":>8}  ' + ' '.join(f'{"ms/step":>10}' for _ in phases) + f' {"":>8}']
  for r in rows:
    pair = r['ms_per_meta_task_pair']
    lines.append(f'{r["row"]:<22} {r["inner_steps"]:>3} {r["steps_per_second"]:8.2f} '
                 f'{r["minutes_per_10000_steps"]:8.1f}  ' + ' '.join(f'{r["ms_per_step"][p]:10.1f}' for p in phases)
                 + f' {pair if pair is None else round(pair, 1)!s:>8}')
  return '\n'.join(lines)


def run_online_benchmarks(rows, steps, warmup, timeout, intra_op_threads, subprocess_json, gin_params=()):
  results = []
  for row in rows:
    args = ['online-one', f'--row={row}', f'--steps={steps}', f'--warmup={warmup}']
    args += [f'--gin_param={b}' for b in gin_params]
    if intra_op_threads:
      args.append(f'--intra_op_threads={intra_op_threads}')
    result = subprocess_json(args, timeout)
    results.append(result)
    print(json.dumps(result), flush=True)
  print(format_online_table(results))
  return results
