"""The README's main job (gin/quickstart.gin) end to end on real Fashion-MNIST, at a reduced size."""
import json
import os
import subprocess
import sys

import pytest

from wtl_tf.data import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_small(tmp_path):
  if prepare.default_raw_dir('fashion_mnist') is None:
    pytest.skip('Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)')
  out = subprocess.run(
      [sys.executable, '-m', 'wtl_tf.main', f'--workdir={tmp_path}', '--gin_param=Benchmark.num_tasks=3',
       '--gin_param=Benchmark.samples_per_task=200', '--gin_param=run_continual.show_progress=False'],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'la_maml' in out.stdout and 'sparse_la_maml' in out.stdout and 'RA %' in out.stdout
  comparison = json.load(open(tmp_path / 'comparison.json'))
  for name in ('la_maml', 'sparse_la_maml'):
    result = json.load(open(tmp_path / name / 'results.json'))
    assert result['dataset'] == 'fashion_mnist_rotations' and len(result['acc_matrix']) == 3
    # Three lightly rotated Fashion-MNIST tasks from 200 samples each: far above chance (0.1).
    assert result['ra'] > 0.5, result['acc_matrix']
    assert comparison[name]['ra'] == result['ra']
    assert os.listdir(tmp_path / name / 'tensorboard')
  assert (tmp_path / 'sparsity.png').stat().st_size > 5000
  assert (tmp_path / 'operative_config.gin').exists()
