"""Errors that name where bad input came from, or which argument was wrong."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
  """A malformed input row: carries the file, 1-based line and field that were wrong.

  The message reads ``path:line: field 'name': what is wrong`` so that a researcher can open the
  file at the right place.
  """

  def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, message: str):
    self.path = str(path)
    self.line = line
    self.field = field
    self.message = message
    where = self.path if line is None else f'{self.path}:{line}'
    what = f"field '{field}': {message}" if field else message
    super().__init__(f'{where}: {what}')


class UsageError(ValueError):
  """A bad command-line argument or combination of arguments; the message names the argument.

  The command line prints it as one line (``embedjax COMMAND: message``) and exits with status 2.
  """
