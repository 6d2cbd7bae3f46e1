"""tools/benchmark.py fewshot helpers: the FLOP count of a Conv4 task and the summary table (no timing here)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf.models.conv4 import conv4  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_conv4_flops_match_a_hand_count():
  forward, first = benchmark.conv_flops(conv4((84, 84, 3), 5))
  layers = [84 * 84 * 9 * 3 * 64, 42 * 42 * 9 * 64 * 64, 21 * 21 * 9 * 64 * 64, 10 * 10 * 9 * 64 * 64, 1600 * 5]
  assert forward == 2 * sum(layers) and first == 2 * layers[0]
  # Config a: K=35 support passes of 25 images and one query pass of 75, forward + backward: ~0.5 TFLOP per task,
  # the README's "about 0.53 TFLOP".
  task = benchmark.fewshot_task_flops(conv4((84, 84, 3), 5), 25, 75, 35, train=True)
  assert task == (35 * 25 + 75) * (3 * forward - first)
  assert 0.45e12 < task < 0.56e12


def test_summary_table_ratios_and_missing_flops():
  rows = [{'config': 'c', 'jit_compile': False, 'tasks_per_second': 30.0, 'gflops_per_second': 150.0,
           'peak_rss_mb': 1500.0},
          {'config': 'c', 'jit_compile': 'peer', 'tasks_per_second': 15.0, 'peak_rss_mb': 2700.0}]
  table = benchmark.format_fewshot_table(rows, 300.0).splitlines()
  assert '2.00x' in table[2] and ' 50 ' in table[2]
  assert 'torch peer' in table[3] and '1.00x' in table[3] and ' - ' in table[3]
