"""The CSV logs of a run folder (``log.csv``, ``val.csv``), as the trainer keeps them.

A resumed run keeps the rows up to its checkpoint and appends from there, so a log
written across interruptions equals an uninterrupted one (:class:`CsvLog`).
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["CsvLog", "rows_until"]


def rows_until(path: Path, header: list[str], iteration: int) -> list[list[str]]:
    """Rows of ``path`` (as text) whose first cell, the iteration, is <= ``iteration``.

    [] when the file is missing or its first line is not ``header`` (another format).
    A row with another number of cells (the last line of a process killed while writing
    it) is dropped.
    """
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != header:
        return []
    return [r for r in rows[1:] if len(r) == len(header) and int(r[0]) <= iteration]


class CsvLog:
    """A CSV file written row by row (flushed), starting with ``header`` and ``keep``.

    ``path`` None: nothing is written (ranks other than 0).
    """

    def __init__(self, path: Path | None, header: list[str], keep: list[list[str]]) -> None:
        self.file = None if path is None else open(path, "w", newline="")
        if self.file is not None:
            self.writer = csv.writer(self.file)
            self.writer.writerow(header)
            self.writer.writerows(keep)
            self.file.flush()

    def write(self, row: list) -> None:
        if self.file is not None:
            self.writer.writerow(row)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
