"""Transparent huge pages for the host memory XLA:CPU allocates (Linux with glibc >= 2.35), for the benchmarks.

XLA:CPU allocates the temporaries of every call afresh. glibc serves blocks above 32 MiB with `mmap` and unmaps
them on free, so each training step touches gigabytes of new 4 KiB pages, and the kernel zeroes every one of them.
On a 2-core CPU machine a batch-8 LBDT-4 training step at 320x320 took 2.2 M page faults and 6.3 CPU-seconds in
the kernel (11.4 s per step); with glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages
(`madvise`) and the same step took 34 k faults, 1.7 s in the kernel and 9.0 s per step (docs/performance.md,
"Host memory: transparent huge pages").

glibc reads its tunables once, when the process starts, so `use_huge_pages` starts the program again (`exec`, same
arguments) with the tunable added. The benchmarks (`benchmarks.throughput`, `benchmarks.compare_reference`) call
it; `main.py` does not: CPU users who want huge pages for training export `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
themselves before starting Python. Set LBDT_HUGE_PAGES=0, or set the tunable yourself, to keep the process as
started.
"""

import os
import platform
import re
import sys

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT = 'LBDT_HUGE_PAGES'
TRANSPARENT_HUGE_PAGES = '/sys/kernel/mm/transparent_hugepage/enabled'
MINIMUM_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable


def transparent_huge_pages_mode(path: str = TRANSPARENT_HUGE_PAGES) -> str | None:
  """The kernel's policy ('always', 'madvise' or 'never'), or None where there is none to read."""
  try:
    with open(path) as f:
      match = re.search(r'\[(\w+)\]', f.read())
  except OSError:
    return None
  return match.group(1) if match else None


def tunables() -> list[str]:
  return [item for item in os.environ.get('GLIBC_TUNABLES', '').split(':') if item]


def huge_pages_requested() -> bool:
  """Whether this process was started with the tunable set (by `use_huge_pages` or by the user)."""
  return any(item.startswith(TUNABLE + '=') for item in tunables())


def reason_not_to_restart(mode: str | None = None) -> str | None:
  """Why `use_huge_pages` leaves this process alone, or None when it restarts it."""
  if os.environ.get(OPT_OUT) == '0':
    return f'{OPT_OUT}=0'
  if huge_pages_requested():
    return f'GLIBC_TUNABLES already sets {TUNABLE}'
  library, version = platform.libc_ver()
  if sys.platform != 'linux' or library != 'glibc':
    return 'not Linux with glibc'
  if tuple(int(part) for part in re.findall(r'\d+', version)[:2]) < MINIMUM_GLIBC:
    return f'glibc {version} has no {TUNABLE} tunable'
  mode = mode or transparent_huge_pages_mode()
  if mode != 'madvise':  # 'always' gives huge pages already; 'never' (or no THP) cannot
    return f'transparent huge pages are {mode or "unavailable"}'
  return None


def use_huge_pages() -> None:
  """Restarts the running program with `GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1` where that takes effect.

  Call it first thing in a command-line entry point (never from library code): it does not return when it
  restarts, and it returns at once when the tunable is set already, opted out of, or of no use on this host.
  """
  if reason_not_to_restart() is not None:
    return
  os.environ['GLIBC_TUNABLES'] = ':'.join(tunables() + [f'{TUNABLE}=1'])
  print(f'lbdt-jax: restarting with GLIBC_TUNABLES={os.environ["GLIBC_TUNABLES"]} (transparent huge pages for '
        f'XLA\'s host buffers; {OPT_OUT}=0 skips this)', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
