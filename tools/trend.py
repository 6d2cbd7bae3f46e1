"""Sparsity against one setting over finished runs (the paper's Figure 2 and Figure 3 (right) trends).

  python tools/trend.py --xlabel='inner steps K' --output=docs/fig2_omniglot_k.png \
      1=runs/fig2_omniglot/k1/ROW/seed_0 2=runs/fig2_omniglot/k2/ROW/seed_0 ...

Each argument is VALUE=RUN_DIR (repeat a value for several seeds: their sparsities are averaged). Reads each run's
results.json (final sparsity per group; few-shot runs report it at the selected checkpoint), prints a table of the
overall sparsity and the score (test accuracy or RA) per value and writes the figure.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('xlabel', 'setting', 'Name of the setting on the x axis.')
flags.DEFINE_string('title', None, 'Figure title (default: the first run\'s learner and dataset).')
flags.DEFINE_string('output', None, 'Where the figure goes (.png).')
flags.DEFINE_bool('log_x', False, 'Logarithmic (base 2) x axis.')
FLAGS = flags.FLAGS


def load(pairs):
  """{value: [results.json, ...]} from VALUE=RUN_DIR arguments."""
  runs = {}
  for pair in pairs:
    value, sep, run_dir = pair.partition('=')
    if not sep:
      raise ValueError(f'expected VALUE=RUN_DIR, got {pair!r}')
    with open(os.path.join(run_dir, 'results.json'), encoding='utf-8') as f:
      runs.setdefault(float(value), []).append(json.load(f))
  return runs


def main(argv):
  runs = load(argv[1:])
  if not runs or not FLAGS.output:
    print('error: give --output and at least one VALUE=RUN_DIR', file=sys.stderr)
    sys.exit(2)
  from wtl_tf import plots  # pylint: disable=g-import-not-at-top
  points = {x: {g: float(np.mean([r['sparsity'][g] for r in rs])) for g in rs[0]['sparsity']}
            for x, rs in runs.items()}
  first = next(iter(runs.values()))[0]
  title = FLAGS.title or f'{first["learner"]} on {first["dataset"]}: final sparsity per group'
  plots.sparsity_trend(points, FLAGS.output, FLAGS.xlabel, title, FLAGS.log_x)
  score = 'test_accuracy' if 'test_accuracy' in first else 'ra'
  print(f'| {FLAGS.xlabel} | runs | overall sparsity % | {score} % |\n|---|---|---|---|')
  for x in sorted(runs):
    values = [100 * r[score] for r in runs[x]]
    print(f'| {x:g} | {len(runs[x])} | {100 * points[x]["overall"]:.1f} | {np.mean(values):.2f} |')
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
