"""A GCS-compatible server on localhost for tests: gcp-storage-emulator, in this process, in memory.

The emulator does not send an object's generation with its content (the `x-goog-generation` header); tensorstore
needs it to update the manifest of an OCDBT checkpoint (orbax's format), so `start` adds it. The emulator ignores
generation preconditions, which is harmless with one writer per object.
"""

import socket

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.handlers import objects


def _with_generation(handler):
  def handle(request, response, storage, *args, **kwargs):
    handler(request, response, storage, *args, **kwargs)
    try:
      stored = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # pylint: disable=broad-except  (no such object: the handler answered 404)
      return
    response['x-goog-generation'] = str(stored['generation'])
  return handle


def _send_generations() -> None:
  for _, handlers in emulator_server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler in (objects.download, objects.get):
        handlers[method] = _with_generation(handler)


def start(bucket: str):
  """(server, URL) of a running emulator with `bucket`; call `server.stop()` when done."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  _send_generations()
  server = emulator_server.create_server('localhost', port, in_memory=True, default_bucket=bucket)
  server.start()
  return server, f'http://localhost:{port}'
