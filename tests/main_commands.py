"""Several main.py command lines in one process (one import of TensorFlow and JAX instead of one per command).

  python tests/main_commands.py COMMANDS.json RESULTS.json

COMMANDS.json lists argument lists (without the program name); RESULTS.json gets, per command, its exit status
(0 when it returns, as `python main.py ...` would exit) and what it printed to stdout and stderr. Each command's
flags are parsed afresh (absl's flags are reset in between).
"""

import contextlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main  # noqa: E402  (the repository's main.py)


def run(argv: list[str], capture: bool = True) -> dict:
  """`python main.py *argv` in this process: {'argv', 'status', 'stdout', 'stderr'} (the output is captured, and
  left empty, unless `capture` is off)."""
  stdout, stderr = io.StringIO(), io.StringIO()
  saved_argv = sys.argv
  sys.argv = ['main.py', *argv]  # where ml_collections' config flag reads the --config.* overrides
  try:
    with (contextlib.redirect_stdout(stdout) if capture else contextlib.nullcontext(),
          contextlib.redirect_stderr(stderr) if capture else contextlib.nullcontext()):
      main.main(main.parse_flags(sys.argv))
    status = 0
  except SystemExit as error:
    status = error.code
  finally:
    sys.argv = saved_argv
    main.FLAGS.unparse_flags()
    for name in [name for name in main.FLAGS if name.startswith('config.')]:
      delattr(main.FLAGS, name)  # the overrides' flags, defined while parsing
  return {'argv': argv, 'status': status, 'stdout': stdout.getvalue(), 'stderr': stderr.getvalue()}


if __name__ == '__main__':
  commands_file, results_file = sys.argv[1:]
  with open(commands_file) as f:
    commands = json.load(f)
  results = []
  for command in commands:
    results.append(run(command))
    print(f'exit {results[-1]["status"]}: main.py {" ".join(command)}', flush=True)
  with open(results_file, 'w') as f:
    json.dump(results, f)
