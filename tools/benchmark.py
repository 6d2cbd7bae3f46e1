"""Benchmarks against the PyTorch peer (../shared/bench/torch_peer.py), run one after the other on this machine.

  python tools/benchmark.py lamaml [--peer_python=$HOME/torch-peer-venv/bin/python] [--iters=500]

lamaml: one La-MAML glance = one incoming batch of 10, 10 single-sample inner steps and a meta-loss after every
inner step over 10 current + 10 replay samples, then the learning-rate and weight updates (the peer's config d with
--meta-every-step). Reports glance steps per second (median of repeats) for the compiled step with and without XLA,
for the full `observe` path (host-side shuffling, replay sampling and memory writes included), and the peer's figure
measured in the same invocation, with the ratio.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'bench',
                    'torch_peer.py')


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
  from wtl_tf.learners.lamaml import LaMAML  # pylint: disable=g-import-not-at-top
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


def run_peer(python, args):
  out = subprocess.run([python, PEER] + args, capture_output=True, text=True, check=True, timeout=1800)
  return out.stdout


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('what', choices=['lamaml'])
  parser.add_argument('--iters', type=int, default=300)
  parser.add_argument('--peer_python', default=None, help='Python with torch installed, to run the peer too.')
  args = parser.parse_args()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  print(f'TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, '
        f'{tf.config.threading.get_intra_op_parallelism_threads() or "default"} intra-op threads')
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
