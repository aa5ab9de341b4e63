"""The restart with glibc's huge-page tunable (benchmarks/host_memory.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import host_memory

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Restarts itself through `use_huge_pages`, then counts the page faults of writing a fresh 64 MiB malloc block.
CHILD = textwrap.dedent('''
    import ctypes, os, resource
    from benchmarks import host_memory
    host_memory.use_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 64 << 20
    block = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(os.environ.get('GLIBC_TUNABLES'), faults)
''')


def clean_environment(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT)}
  env['PYTHONPATH'] = REPOSITORY
  return {**env, **extra}


def run_child(env: dict) -> tuple[str, int, str]:
  result = subprocess.run([sys.executable, '-c', CHILD], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
  tunables, faults = result.stdout.split()
  return tunables, int(faults), result.stderr


@pytest.fixture
def restartable_host(monkeypatch):
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv(host_memory.OPT_OUT, raising=False)
  reason = host_memory.reason_not_to_restart()
  if reason:
    pytest.skip(f'this host gets no restart: {reason}')


def test_restart_adds_the_tunable_and_cuts_page_faults(restartable_host):
  del restartable_host
  tunables, faults, stderr = run_child(clean_environment(GLIBC_TUNABLES='glibc.malloc.check=0'))
  assert tunables == 'glibc.malloc.check=0:glibc.malloc.hugetlb=1'  # the user's tunables kept
  assert 'restarting with GLIBC_TUNABLES' in stderr
  # 64 MiB in 4 KiB pages is 16,384 faults; in 2 MiB pages, 32.
  assert faults < 2048, faults


def test_opting_out_keeps_small_pages(restartable_host):
  del restartable_host
  tunables, faults, stderr = run_child(clean_environment(**{host_memory.OPT_OUT: '0'}))
  assert tunables == 'None' and stderr == ''
  assert faults > 8192, faults


def test_no_restart_when_the_tunable_is_set_or_unusable(monkeypatch):
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=0')
  assert 'already sets' in host_memory.reason_not_to_restart()
  assert host_memory.huge_pages_requested()
  monkeypatch.delenv('GLIBC_TUNABLES')
  monkeypatch.setenv(host_memory.OPT_OUT, '0')
  assert host_memory.reason_not_to_restart() == f'{host_memory.OPT_OUT}=0'
  monkeypatch.delenv(host_memory.OPT_OUT)
  if host_memory.reason_not_to_restart(mode='madvise') is None:  # a glibc Linux host: the kernel policy decides
    assert host_memory.reason_not_to_restart(mode='never') == 'transparent huge pages are never'
    assert host_memory.reason_not_to_restart(mode='always') == 'transparent huge pages are always'


def test_transparent_huge_pages_mode_reads_the_bracketed_policy(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert host_memory.transparent_huge_pages_mode(str(path)) == 'madvise'
  assert host_memory.transparent_huge_pages_mode(str(tmp_path / 'missing')) is None
