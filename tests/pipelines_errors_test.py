"""pipelines.main on a quiet console: only its own lines, and one line `error: ...` (exit 2) for what a user can fix."""
import errno
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from pipelines import core
from pipelines import main as pipelines_main
from tests.pipelines_core_test import write_idx
from tests.pipelines_omniglot_cifar_mini_test import make_cifar_batches, make_cifar_folders, zip_tree
from wtl_tf.data import episodes, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
FOREIGN = re.compile(r'^[IWEF]\d{4}|WARNING|INFO|apitools|bigquery|absl|oneDNN|cuda|Traceback', re.IGNORECASE)
pytestmark = pytest.mark.beam


def cli(*args, env=None):
  """Runs pipelines.main as a user would: no inherited log settings."""
  clean = {k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'PYTHONWARNINGS', 'WTL_DEBUG')}
  return subprocess.run([sys.executable, '-m', 'pipelines.main', *args], capture_output=True, text=True, cwd=ROOT,
                        env={**clean, **(env or {})}, timeout=600)


def fake_mnist(root, n=30):
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  for split in ('train', 't10k'):
    write_idx(os.path.join(root, f'{split}-images-idx3-ubyte.gz'), rng.integers(0, 256, (n, 28, 28)))
    write_idx(os.path.join(root, f'{split}-labels-idx1-ubyte.gz'), np.arange(n) % 10)
  return root


def truncate(path, keep=0.6):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:int(len(data) * keep)])


def leftovers(path):
  return sorted(os.path.relpath(os.path.join(r, n), path) for r, ds, fs in os.walk(path) for n in ds + fs)


# --------------------------------------------------------------------------------------------------------------------
# Task A: the console.
# --------------------------------------------------------------------------------------------------------------------

def test_cli_prints_only_its_own_lines(tmp_path):
  # The default multi-process runner: its workers write to the inherited stderr.
  out = cli('--dataset=mnist', f'--input_dir={fake_mnist(str(tmp_path / "raw"))}', f'--output_dir={tmp_path / "o"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stderr == ''
  lines = out.stdout.splitlines()
  assert lines[0].startswith('mnist: 60 images') and all(line.startswith('  ') for line in lines[1:]), lines
  assert not [line for line in lines if FOREIGN.search(line)]


def test_debug_and_verbosity_show_library_output():
  code = ('from wtl_tf import console; console.quiet(); import logging, warnings, tensorflow; '
          'logging.getLogger("apache_beam").warning("library warning"); warnings.warn("library python warning")')
  run = lambda *args, env=None: subprocess.run(
      [sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**{k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'WTL_DEBUG', 'PYTHONWARNINGS')},
           **(env or {})})
  quiet = run()
  assert quiet.returncode == 0 and quiet.stderr == '', quiet.stderr  # TensorFlow's import-time C++ lines too.
  for loud in (run(env={'WTL_DEBUG': '1'}), run('--verbosity=1'), run('-v', '0')):
    assert 'library warning' in loud.stderr and 'library python warning' in loud.stderr, loud.stderr


def test_muted_stderr_replays_what_a_failing_block_printed(tmp_path):
  (tmp_path / 'noisy.py').write_text('import os\nos.write(2, b"C++ says why\\n")\nraise ImportError("boom")\n')
  code = ('from wtl_tf import console; console.quiet()\nwith console.muted_stderr(replay_on_error=True):\n'
          '  import noisy')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, 'PYTHONPATH': f'{tmp_path}:{ROOT}', 'WTL_DEBUG': ''})
  assert 'C++ says why' in out.stderr and 'ImportError: boom' in out.stderr


# --------------------------------------------------------------------------------------------------------------------
# Task B: one-line errors, nothing left behind.
# --------------------------------------------------------------------------------------------------------------------

def test_truncated_gz_in_a_worker_is_one_line(tmp_path):
  raw = fake_mnist(str(tmp_path / 'raw'))
  truncate(os.path.join(raw, 'train-images-idx3-ubyte.gz'))
  out = cli('--dataset=mnist', f'--input_dir={raw}', f'--output_dir={tmp_path / "o"}')  # Multi-process runner.
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.count('\n') == 1 and out.stderr.startswith('error: '), out.stderr
  assert 'train-images-idx3-ubyte.gz is corrupt or truncated' in out.stderr and out.stdout == ''
  assert not os.path.exists(tmp_path / 'o')


def test_truncated_tar_gz_and_zip_name_the_file(tmp_path):
  make_cifar_batches(str(tmp_path / 'batches' / 'cifar-10-batches-py'))
  os.makedirs(tmp_path / 'tar')
  with tarfile.open(tmp_path / 'tar' / 'cifar-10-python.tar.gz', 'w:gz') as tar:
    tar.add(tmp_path / 'batches' / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
  truncate(tmp_path / 'tar' / 'cifar-10-python.tar.gz')
  with pytest.raises(core.InputError, match=r'cifar-10-python\.tar\.gz is corrupt or truncated \(ReadError'):
    pipelines_main.run('cifar10', str(tmp_path / 'tar'), str(tmp_path / 'o1'), beam_args=FAST, quiet=True)
  make_cifar_folders(str(tmp_path / 'dir'))
  os.makedirs(tmp_path / 'zips')
  for split in ('train', 'test'):
    zip_tree(str(tmp_path / 'dir' / split), str(tmp_path / 'zips' / f'cifar10_jpeg_{split}.zip'), prefix=f'{split}/')
  truncate(tmp_path / 'zips' / 'cifar10_jpeg_test.zip', keep=0.9)
  with pytest.raises(core.InputError, match=r'cifar10_jpeg_test\.zip is corrupt or truncated \(BadZipFile'):
    pipelines_main.run('cifar10', str(tmp_path / 'zips'), str(tmp_path / 'o2'), beam_args=FAST, quiet=True)
  assert not os.path.exists(tmp_path / 'o1') and not os.path.exists(tmp_path / 'o2')


def test_unusable_output_dir(tmp_path):
  raw = fake_mnist(str(tmp_path / 'raw'))
  (tmp_path / 'file').write_text('x')
  for target in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
    with pytest.raises(core.OutputError, match='cannot write to the output directory .*: Not a directory'):
      pipelines_main.run('mnist', raw, str(target), beam_args=FAST, quiet=True)
  assert (tmp_path / 'file').read_text() == 'x'
  if os.geteuid() != 0:  # root writes anywhere
    os.makedirs(tmp_path / 'locked')
    os.chmod(tmp_path / 'locked', 0o500)
    with pytest.raises(core.OutputError, match='Permission denied'):
      pipelines_main.run('mnist', raw, str(tmp_path / 'locked' / 'o'), beam_args=FAST, quiet=True)


def test_disk_full_in_a_worker_is_one_line_and_leaves_no_temp_files(tmp_path):
  # Writing to /dev/full fails with ENOSPC: the spec file, a link to it, is written by a worker mid-run.
  raw = fake_mnist(str(tmp_path / 'raw'))
  out_dir = tmp_path / 'o'
  os.makedirs(out_dir)
  os.symlink('/dev/full', out_dir / 'dataset_spec.json')
  out = cli('--dataset=mnist', f'--input_dir={raw}', f'--output_dir={out_dir}')
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr == f'error: cannot write to the output directory {out_dir}: No space left on device\n'
  assert not [p for p in leftovers(out_dir) if '.temp' in p]


def test_disk_full_in_process_removes_the_new_output_dir(tmp_path, monkeypatch):
  def full(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(core.TFRecordFileSink, 'write', full)
  with pytest.raises(core.OutputError, match='No space left on device'):
    pipelines_main.run('mnist', fake_mnist(str(tmp_path / 'raw')), str(tmp_path / 'o'), beam_args=FAST, quiet=True)
  assert not os.path.exists(tmp_path / 'o')


def test_bugs_keep_their_traceback(tmp_path, monkeypatch):
  def bug(*_):
    raise KeyError('a bug')
  monkeypatch.setattr(core, 'make_example', bug)
  with pytest.raises(KeyError):
    pipelines_main.run('mnist', fake_mnist(str(tmp_path / 'raw')), str(tmp_path / 'o'), beam_args=FAST, quiet=True)
  worker_text = 'Traceback (most recent call last):\n  File "x.py"\nKeyError: \'a bug\' [while running \'Encode\']'
  assert pipelines_main.user_error(RuntimeError(worker_text), 'o') is None
  worker_text = 'Traceback ...\nOSError: [Errno 28] No space left on device [while running \'WriteRecords\']'
  assert str(pipelines_main.user_error(RuntimeError(worker_text), 'o')) == (
      'cannot write to the output directory o: No space left on device')


# --------------------------------------------------------------------------------------------------------------------
# Reading records: a corrupt record file is a DataError naming it.
# --------------------------------------------------------------------------------------------------------------------

def test_corrupt_record_is_a_data_error_naming_the_file(tmp_path):
  pipelines_main.run('mnist', fake_mnist(str(tmp_path / 'raw')), str(tmp_path / 'o'), beam_args=FAST, quiet=True)
  spec = records.DatasetSpec.load(str(tmp_path / 'o'))
  victim = spec.files('train', 3)[0]
  data = bytearray(open(victim, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  open(victim, 'wb').write(bytes(data))
  with pytest.raises(records.DataError, match=rf'corrupt or truncated TFRecord {os.path.basename(victim)} in'):
    episodes.EpisodeSampler(spec, 'train', ways=5, shots=1, queries=1, mode='memory')
  truncate(victim, keep=0.5)
  with pytest.raises(records.DataError, match='truncated or not a TFRecord file'):
    episodes.EpisodeSampler(spec, 'train', ways=5, shots=1, queries=1, mode='stream')


def test_a_corrupt_record_read_in_stream_mode_is_a_data_error(tmp_path):
  # Framing intact, payloads damaged: only reading the records finds it, which stream mode does lazily.
  pipelines_main.run('mnist', fake_mnist(str(tmp_path / 'raw')), str(tmp_path / 'o'), beam_args=FAST, quiet=True)
  spec = records.DatasetSpec.load(str(tmp_path / 'o'))
  victim = spec.files('train', 3)[0]
  data = bytearray(open(victim, 'rb').read())
  for offset, length in episodes.record_ranges(victim)[0]:
    data[offset + length // 4:offset + length // 2] = bytes(length // 2 - length // 4)
  open(victim, 'wb').write(bytes(data))
  sampler = episodes.EpisodeSampler(spec, 'train', ways=10, shots=1, queries=1, mode='stream')  # Every class.
  with pytest.raises(records.DataError, match=r'a corrupt record in the training episodes: .*Re-run the pipeline'):
    list(records.checked(sampler.dataset(0, num_episodes=2), 'the training episodes'))
  with pytest.raises(ValueError, match='not a record problem'):  # Anything else is not turned into a DataError.
    list(records.checked(iter(lambda: (_ for _ in ()).throw(ValueError('not a record problem')), None), 'x'))
