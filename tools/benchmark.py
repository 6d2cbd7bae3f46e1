"""Benchmarks against a PyTorch peer implementation, run one after the other on this machine.

  python tools/benchmark.py lamaml [--peer_python=$HOME/torch-peer-venv/bin/python --peer_script=PATH] [--iters=500]
  python tools/benchmark.py fewshot [--configs=a,b,c,a-test] [--jit=off|on|off,on] [--peer_python=...]
  python tools/benchmark.py online [--rows=p098_c_maml,p098_sparse_c_maml,...] [--steps=300] [--warmup=30]

fewshot: one first-order sparse-MAML meta-training step of the peer's configurations (Conv4 with biases and
batch-statistics BN, every parameter masked, reference mask 0.5*(sign(m)+1), Adam on theta and m, summed outer loss):
  a       84x84x3, 5-way 5-shot, 15 query, K=35, meta-batch 2     b  as a with K=5
  c       28x28x1, 5-way 1-shot, 15 query, K=5, meta-batch 32     a-test  meta-test of a (adapt K=35 + query), 1 task
Each configuration runs in a fresh process (so peak RSS is its own), ours first and then the peer's, and reports
tasks/s (median over timed steps), peak RSS, and the conv/matmul GFLOP/s achieved against a conv and a matmul peak
measured in the same invocation. The data are synthetic random episodes generated outside the timed region.

lamaml: one La-MAML glance = one incoming batch of 10, 10 single-sample inner steps and a meta-loss after every
inner step over 10 current + 10 replay samples, then the learning-rate and weight updates (the peer's config d with
--meta-every-step). Reports glance steps per second (median of repeats) for the compiled step with and without XLA,
for the full `observe` path (host-side shuffling, replay sampling and memory writes included), and the peer's figure
measured in the same invocation, with the ratio.

online: OSAKA stream steps per second of the Table-6 rows (gin/online/<row>.gin) on the real stream, each row in a
fresh process, with the time per step split into evaluation, adaptation, detection, meta-update, buffer and other
(see tools/benchmark_online.py).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wtl_tf import console  # pylint: disable=g-import-not-at-top,wrong-import-position

console.quiet()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# The peer is a single-file PyTorch implementation of the same steps (sparse-MAML and La-MAML), taking
# --config/--warmup/--iters and printing JSON; it is not part of wtl_tf. Name it with --peer_script or WTL_PEER_SCRIPT.
PEER_SCRIPT_ENV = 'WTL_PEER_SCRIPT'


def _median_rate(fn, iters, repeats=3):
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      fn()
    rates.append(iters / (time.perf_counter() - start))
  return statistics.median(rates)


def bench_lamaml(iters, jit_compile):
  """Glance steps per second: (compiled step only, full observe path)."""
  from wtl_tf.learners.continual.lamaml import LaMAML  # pylint: disable=g-import-not-at-top
  from wtl_tf.models.mlp import mlp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  learner = LaMAML(mlp(), glances=1, memories=200, replay_size=10, jit_compile=jit_compile)
  x = rng.uniform(0, 1, (10, 784)).astype(np.float32)
  y = rng.integers(0, 10, 10)
  learner.memory.push(rng.uniform(0, 1, (200, 784)).astype(np.float32), rng.integers(0, 10, 200))
  bx = np.concatenate([x, x]); by = np.concatenate([y, y]); w = np.ones(20, np.float32)  # pylint: disable=multiple-statements
  xw = np.ones(10, np.float32)
  step = lambda: learner._glance(x, y, xw, bx, by, w)  # pylint: disable=protected-access
  for _ in range(20):
    step()
  compiled = _median_rate(lambda: step().numpy(), iters)
  full = _median_rate(lambda: learner.observe(x, y, 0), iters)
  return compiled, full


FEWSHOT_CONFIGS = {
    'a': dict(shape=(84, 84, 3), shots=5, steps=35, batch=2, alpha=0.25, warmup=1, iters=3, peer=(1, 4)),
    'b': dict(shape=(84, 84, 3), shots=5, steps=5, batch=2, alpha=0.25, warmup=2, iters=6, peer=(2, 10)),
    'c': dict(shape=(28, 28, 1), shots=1, steps=5, batch=32, alpha=0.4, warmup=2, iters=8, peer=(2, 10)),
    'a-test': dict(shape=(84, 84, 3), shots=5, steps=35, batch=1, alpha=0.25, warmup=1, iters=4, peer=(1, 6),
                   test=True),
}


def peak_rss_mb():
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def conv_flops(model):
  """(forward FLOPs of one image, those of the first layer) over the model's Conv2D and Dense layers."""
  import keras  # pylint: disable=g-import-not-at-top
  total, first = 0, None
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      out = layer.output.shape
      kh, kw, cin, cout = layer.kernel.shape
      flops = 2 * out[1] * out[2] * kh * kw * cin * cout // layer.groups
    elif isinstance(layer, keras.layers.Dense):
      flops = 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    else:
      continue
    total += flops
    first = flops if first is None else first
  return total, first


def fewshot_task_flops(model, support, query, steps, train):
  """Conv/matmul FLOPs of one task: K support forward+backward passes, then the query forward (+ backward).

  A backward pass is two forwards (input and weight gradients) less the first layer's input gradient.
  """
  forward, first = conv_flops(model)
  both = 3 * forward - first
  return steps * support * both + query * (both if train else forward)


def bench_fewshot_one(name, jit_compile, intra_op_threads=None):
  """Runs one configuration in this process; returns a dict (tasks/s, peak RSS, GFLOP/s)."""
  import functools  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from wtl_tf import distribute  # pylint: disable=g-import-not-at-top
  distribute.set_threads(intra_op_threads, None)
  from wtl_tf import inner_loop, modulation, optimizers  # pylint: disable=g-import-not-at-top
  from wtl_tf.data.fewshot import SyntheticData  # pylint: disable=g-import-not-at-top
  from wtl_tf.learners.fewshot import FewShotLearner  # pylint: disable=g-import-not-at-top
  from wtl_tf.models.conv4 import conv4  # pylint: disable=g-import-not-at-top
  cfg = FEWSHOT_CONFIGS[name]
  ways, queries = 5, 15
  learner = FewShotLearner(
      functools.partial(conv4, cfg['shape'], ways), modulation=modulation.BinaryMask(step_size=cfg['alpha']),
      inner_loop=inner_loop.InnerLoop(cfg['steps']), theta_optimizer=functools.partial(optimizers.adam, 1e-3),
      mask_optimizer=functools.partial(optimizers.adam, 7.5e-3), jit_compile=jit_compile, name=name)
  split = SyntheticData(cfg['shape']).split('train', ways, cfg['shots'], queries)
  total = cfg['warmup'] + cfg['iters']
  batches = [split.episodes(seed=0, start=i * cfg['batch'], count=cfg['batch']) for i in range(total)]
  batches = [(type(t)(*(tf.constant(x) for x in t)), tf.constant(p)) for t, p in batches]
  step = learner.eval_step if cfg.get('test') else learner.train_step
  times = []
  for i, (tasks, positions) in enumerate(batches):
    start = time.perf_counter()
    out = step(tasks, positions)
    tf.nest.map_structure(lambda x: x.numpy(), out)
    if i >= cfg['warmup']:
      times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  flops = fewshot_task_flops(learner.model, ways * cfg['shots'], ways * queries, cfg['steps'],
                             train=not cfg.get('test')) * cfg['batch']
  return {'config': name, 'jit_compile': jit_compile, 'intra_op_threads': intra_op_threads,
          'tasks_per_second': cfg['batch'] / seconds, 'seconds_per_step': seconds, 'gflops_per_second': flops / seconds / 1e9, 'peak_rss_mb': peak_rss_mb()}


def bench_peak(seconds=3.0):
  """GFLOP/s of a large float32 matmul and of a Conv4-like conv forward+backward (this machine's practical peak)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.random.normal([2048, 2048])
  x = tf.random.normal([64, 42, 42, 64])
  k = tf.random.normal([3, 3, 64, 64])

  @tf.function
  def matmul():
    return tf.reduce_sum(tf.matmul(a, a))

  @tf.function
  def conv():
    with tf.GradientTape() as tape:
      tape.watch([x, k])
      y = tf.nn.conv2d(x, k, 1, 'SAME')
    return [tf.reduce_sum(g) for g in tape.gradient(y, [x, k], output_gradients=y)]

  out = {}
  for name, fn, flops in (('matmul', matmul, 2 * 2048 ** 3), ('conv', conv, 3 * 2 * 64 * 42 * 42 * 9 * 64 * 64)):
    tf.nest.map_structure(lambda t: t.numpy(), fn())
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      tf.nest.map_structure(lambda t: t.numpy(), fn())
      count += 1
    out[name] = flops * count / (time.perf_counter() - start) / 1e9
  return out


def _subprocess_json(args, timeout):
  out = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, capture_output=True, text=True,
                       timeout=timeout, check=False)
  if out.returncode:
    raise RuntimeError(f'benchmark subprocess {args} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def format_fewshot_table(rows, peak_gflops):
  """The summary table: tasks/s, ratio to the peer of the same configuration, GFLOP/s, share of peak, peak RSS."""
  lines = [f'\n{"config":<8} {"who":<12} {"tasks/s":>9} {"vs peer":>8} {"GFLOP/s":>8} {"% peak":>7} {"peak RSS MB":>12}']
  for row in rows:
    peer = next((r for r in rows if r['config'] == row['config'] and r['jit_compile'] == 'peer'), None)
    who = 'torch peer' if row['jit_compile'] == 'peer' else f'jit={row["jit_compile"]}'
    ratio = f'{row["tasks_per_second"] / peer["tasks_per_second"]:.2f}x' if peer else '-'
    gflops = row.get('gflops_per_second')
    gflops_text = '-' if gflops is None else f'{gflops:.1f}'
    share_text = '-' if gflops is None else f'{100 * gflops / peak_gflops:.0f}'
    lines.append(f'{row["config"]:<8} {who:<12} {row["tasks_per_second"]:9.3f} {ratio:>8} {gflops_text:>8} '
                 f'{share_text:>7} {row["peak_rss_mb"]:12.0f}')
  return '\n'.join(lines)


def run_fewshot_benchmarks(configs, jits, peer_python, timeout, intra_op_threads=None):
  peak = _subprocess_json(['peak'], timeout)
  print(f'peak: matmul {peak["matmul"]:.1f} GFLOP/s, conv fwd+bwd {peak["conv"]:.1f} GFLOP/s', flush=True)
  top = max(peak.values())
  rows = []
  for name in configs:
    for jit in jits:
      threads = [f'--intra_op_threads={intra_op_threads}'] if intra_op_threads else []
      ours = _subprocess_json(['fewshot-one', f'--config={name}', f'--jit={jit}'] + threads, timeout)
      rows.append(ours)
      print(f'wtl_tf {name} jit={jit}: {ours["tasks_per_second"]:.3f} tasks/s, {ours["gflops_per_second"]:.1f} '
            f'GFLOP/s ({100 * ours["gflops_per_second"] / top:.0f}% of peak), peak RSS {ours["peak_rss_mb"]:.0f} MB',
            flush=True)
    if peer_python:
      warmup, iters = FEWSHOT_CONFIGS[name]['peer']
      text = run_peer(peer_python, ['--config', name, '--warmup', str(warmup), '--iters', str(iters)])
      result = json.loads([line for line in text.splitlines() if line.startswith('{')][-1])
      rows.append({'config': name, 'jit_compile': 'peer', 'tasks_per_second': result['throughput'],
                   'peak_rss_mb': result['peak_rss_mb']})
      print(f'peer   {name}: {result["throughput"]:.3f} tasks/s, peak RSS {result["peak_rss_mb"]:.0f} MB', flush=True)
  print(format_fewshot_table(rows, top))
  return rows


_peer_script = None


def run_peer(python, args):
  out = subprocess.run([python, _peer_script] + args, capture_output=True, text=True, check=True, timeout=1800)
  return out.stdout


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('what', choices=['lamaml', 'fewshot', 'fewshot-one', 'peak', 'online', 'online-one'])
  parser.add_argument('--iters', type=int, default=300)
  parser.add_argument('--peer_python', default=None, help='Python with torch installed, to run the peer too.')
  parser.add_argument('--peer_script', default=os.environ.get(PEER_SCRIPT_ENV),
                      help=f'The peer benchmark script (default: ${PEER_SCRIPT_ENV}).')
  parser.add_argument('--configs', default='a,b,c,a-test', help='fewshot: comma-separated peer configurations.')
  parser.add_argument('--config', default='a', choices=sorted(FEWSHOT_CONFIGS), help='fewshot-one: one of them.')
  parser.add_argument('--jit', default='off', help='fewshot: off, on or off,on (XLA for each replica step).')
  parser.add_argument('--timeout', type=int, default=1800, help='fewshot: seconds per subprocess.')
  parser.add_argument('--intra_op_threads', type=int, default=None,
                      help='fewshot: TensorFlow intra-op threads (default: one per core).')
  parser.add_argument('--rows', default=None, help='online: comma-separated gin/online rows (default: C-MAML and '
                      'sparse-C-MAML at p=0.98 and p=0.9).')
  parser.add_argument('--row', default='p098_c_maml', help='online-one: one row.')
  parser.add_argument('--steps', type=int, default=300, help='online: timed stream steps per row.')
  parser.add_argument('--warmup', type=int, default=30, help='online: untimed stream steps first (tracing).')
  parser.add_argument('--gin_param', action='append', default=[],
                      help='online: a gin binding applied to every row (repeatable).')
  args = parser.parse_args()
  if args.peer_python:
    if not args.peer_script or not os.path.isfile(args.peer_script):
      parser.error(f'--peer_python needs the peer script: --peer_script=PATH or ${PEER_SCRIPT_ENV} '
                   f'(got {args.peer_script!r})')
    global _peer_script  # pylint: disable=global-statement
    _peer_script = os.path.abspath(args.peer_script)
  if args.what in ('online', 'online-one'):
    import benchmark_online  # pylint: disable=g-import-not-at-top  (tools/, next to this file)
    if args.what == 'online-one':
      print(json.dumps(benchmark_online.bench_online_one(args.row, args.steps, args.warmup, args.intra_op_threads,
                                                         args.gin_param)))
    else:
      rows = (args.rows or benchmark_online.DEFAULT_ROWS).split(',')
      benchmark_online.run_online_benchmarks(rows, args.steps, args.warmup, args.timeout, args.intra_op_threads,
                                             _subprocess_json, args.gin_param)
    return
  if args.what == 'fewshot-one':
    print(json.dumps(bench_fewshot_one(args.config, args.jit == 'on', args.intra_op_threads)))
    return
  if args.what == 'peak':
    print(json.dumps(bench_peak()))
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  print(f'TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, '
        f'{tf.config.threading.get_intra_op_parallelism_threads() or "default"} intra-op threads')
  if args.what == 'fewshot':
    jits = [j.strip() for j in args.jit.split(',')]
    if any(j not in ('on', 'off') for j in jits):
      parser.error('--jit takes off, on or off,on')
    configs = [c.strip() for c in args.configs.split(',')]
    unknown = [c for c in configs if c not in FEWSHOT_CONFIGS]
    if unknown:
      parser.error(f'unknown --configs {unknown}; choose from {sorted(FEWSHOT_CONFIGS)}')
    run_fewshot_benchmarks(configs, jits, args.peer_python, args.timeout, args.intra_op_threads)
    return
  if args.what == 'lamaml':
    rows = []
    for jit in (False, True):
      compiled, full = bench_lamaml(args.iters, jit)
      rows.append((f'wtl_tf La-MAML glance, jit_compile={jit}', compiled, full))
    peer = None
    if args.peer_python:
      text = run_peer(args.peer_python, ['--config', 'd', '--warmup', '20', '--iters', str(args.iters),
                                         '--meta-every-step'])
      print(text.strip())
      match = re.search(r'([0-9.]+)\s*steps/s', text)
      peer = float(match.group(1)) if match else None
    print(f'\n{"configuration":<42} {"step only":>10} {"observe()":>10} {"vs peer":>8}')
    for name, compiled, full in rows:
      ratio = f'{full / peer:.2f}x' if peer else '-'
      print(f'{name:<42} {compiled:10.1f} {full:10.1f} {ratio:>8}')
    if peer:
      print(f'{"PyTorch peer (config d, meta every step)":<42} {peer:10.1f} {"":>10} {"1.00x":>8}')
    print('(glance steps per second, median of 3 repeats; "vs peer" compares the full observe() path)')


if __name__ == '__main__':
  main()
