"""tools/reproduce_fewshot.py: paper values per row, a smoke sweep over seeds that resumes instead of redoing."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import reproduce_fewshot  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_paper_values_per_row():
  assert reproduce_fewshot.paper_values('sparse_maml_conv4_miniimagenet_5w5s') == {
      'test_accuracy': (67.03, 0.74), 'sparsity': (74.98, 0.10)}
  cross = reproduce_fewshot.paper_values('sparse_maml_plus_conv4_miniimagenet_5w1s_crossdomain')
  assert cross['cross_domain/cub'] == (43.43, 1.04) and cross['test_accuracy'] == (51.04, 0.59)
  assert reproduce_fewshot.paper_values('sparse_relu_maml_resnet12_miniimagenet_5w5s') == {
      'test_accuracy': (73.01, 0.24)}
  assert reproduce_fewshot.paper_values('boil_resnet12_miniimagenet_5w1s') == {}  # Not in the paper.
  rows = reproduce_fewshot.list_rows()
  assert 'fig2/sparse_maml_conv4_miniimagenet_5w1s_k15' in rows and 'base' not in rows
  assert not any(r.startswith('learners/') for r in rows)


def test_smoke_sweep_resumes_and_aggregates(tmp_path, capsys):
  args = ['--row=sparse_maml_conv4_omniglot_5w1s', '--smoke', '--synthetic', f'--workdir={tmp_path}',
          '--gin_param=run_fewshot.meta_batch_size=2', '--gin_param=run_fewshot.show_progress=False']
  reproduce_fewshot.main(args + ['--seeds=0'])
  first = tmp_path / 'sparse_maml_conv4_omniglot_5w1s_smoke_synthetic' / 'seed_0' / 'results.json'
  stamp = os.path.getmtime(first)
  summary = reproduce_fewshot.main(args + ['--seeds=0,1'])
  assert os.path.getmtime(first) == stamp  # Seed 0 was read back, not rerun.
  assert summary['test_accuracy'][2] == 2 and 0 <= summary['test_accuracy'][0] <= 100
  assert 30 < summary['sparsity'][0] < 70
  with open(tmp_path / 'sparse_maml_conv4_omniglot_5w1s_smoke_synthetic' / 'summary.json', encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['seeds'] == [0, 1] and saved['ours']['test_accuracy']['n'] == 2
  assert 'test_accuracy' in capsys.readouterr().out
