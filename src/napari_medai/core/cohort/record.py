"""The run record: one JSON line per finished scan in the output folder.

Appending a line (flushed and synced) is the only write while a run goes on,
so killing the driver loses at most the line being written; a torn last line
is ignored on reading. The latest line per scan id wins. At the end of a run
the latest rows are also written atomically as a CSV table for people and
spreadsheets. A re-run skips scans that are done with the same fingerprint,
settings and outputs still present; failed, new and changed scans run again.

The record is a file anyone can edit, so every row is checked on reading: a
row with a field of the wrong type, or naming outputs other than the files
this run would write in the output folder (``/etc/passwd``, ``../x``), is
never trusted; its scan runs again and :attr:`RunRecord.damaged` says why.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_medai.core.cohort.manifest import ScanItem
from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write

RECORD_FILE = "cohort_record.jsonl"
TABLE_FILE = "cohort_record.csv"
TABLE_COLUMNS = (
    "id",
    "input",
    "status",
    "error",
    "warning",
    "input_sha256",
    "fingerprint",
    "outputs",
    "output_sha256",
    "seconds",
    "finished",
    "task",
)
STATUSES = ("done", "failed")
#: Fields every row has, and their type.
TEXT_FIELDS = ("input", "fingerprint", "task", "error")
#: Fields only a done row has (hashes of the input and the first output).
HASH_FIELDS = ("input_sha256", "output_sha256")


class RunRecord:
    """The record of a cohort run in ``out``; reads what earlier runs left, checking every row."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / RECORD_FILE
        self.latest: dict[str, dict[str, Any]] = {}
        #: Scan id -> why its latest row is not trusted (that scan runs again).
        self.damaged: dict[str, str] = {}
        for number, line in enumerate(self._lines(), start=1):
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # not UTF-8, not JSON, or absurdly deep
                continue  # e.g. a line torn by a killed driver: that scan simply runs again
            key = row.get("id") if isinstance(row, dict) else None
            if not isinstance(key, str) or not key:
                continue  # no scan to attach it to; nothing is trusted from it
            problem = row_problem(row)
            if problem is None:
                self.latest[key] = row
                self.damaged.pop(key, None)
            else:
                self.latest.pop(key, None)
                self.damaged[key] = f"{self.path}, line {number}: {problem}"

    def _lines(self) -> list[bytes]:
        if not self.path.exists():
            return []
        try:
            return self.path.read_bytes().split(b"\n")
        except OSError as error:
            raise MedaiError(
                f"{self.path}: the run record cannot be read ({error.strerror}); "
                "move it away to start a new record"
            ) from error

    def why_run(self, item: ScanItem, task_key: str, outputs: list[str]) -> str | None:
        """``None`` when ``item`` is done and unchanged, else why it runs.

        ``outputs`` are the file names this run writes for ``item``: a done row
        counts only when it names exactly these and each is a file in ``out``.
        """
        if item.id in self.damaged:
            return "damaged"
        row = self.latest.get(item.id)
        if row is None:
            return "new"
        if row["status"] != "done":
            return "failed"
        unchanged = row["fingerprint"] == item.fingerprint and row["task"] == task_key
        present = row["outputs"] == outputs and all(self._holds(name) for name in outputs)
        return None if unchanged and present else "changed"

    def _holds(self, name: str) -> bool:
        """Whether ``name`` is a file of its own in ``out`` (not a link to one elsewhere)."""
        path = self.out / name
        return path.is_file() and not path.is_symlink()

    def append(self, row: dict[str, Any]) -> None:
        """Add ``row`` durably (a torn earlier line gets its newline first)."""
        self.out.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, default=str, separators=(",", ":")) + "\n"
        with open(self.path, "ab+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        self.latest[row["id"]] = row
        self.damaged.pop(row["id"], None)

    def write_table(self, ids: Iterable[str]) -> Path:
        """The latest row of every id in ``ids`` as a CSV table, written atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, TABLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for key in ids:
            row = self.latest.get(key)
            if row is not None:
                flat = dict(row)
                flat["outputs"] = " ".join(row.get("outputs", []))
                flat["seconds"] = row.get("seconds", {}).get("total")
                writer.writerow(flat)
        text = buffer.getvalue()
        return atomic_write(
            self.out / TABLE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"), True
        )


def row_problem(row: dict[str, Any]) -> str | None:
    """Why a record row cannot be trusted, naming the field; ``None`` when it is sound."""
    if row.get("status") not in STATUSES:
        return f"field 'status' is {_shown(row.get('status'))}, not one of {', '.join(STATUSES)}"
    for name in TEXT_FIELDS + (HASH_FIELDS if row["status"] == "done" else ()):
        if not isinstance(row.get(name), str):
            return f"field '{name}' is {_shown(row.get(name))}, not text"
    outputs = row.get("outputs")
    if not isinstance(outputs, list) or not all(_plain_name(name) for name in outputs):
        return f"field 'outputs' is {_shown(outputs)}, not file names in the output folder"
    seconds = row.get("seconds", {})
    if not isinstance(seconds, dict) or not all(_number(v) for v in seconds.values()):
        return f"field 'seconds' is {_shown(seconds)}, not a table of numbers"
    return None


def _plain_name(name: Any) -> bool:
    """Whether ``name`` is a bare file name: no folder part, no '..', nothing outside."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "\0" not in name
        and Path(name).name == name
        and "\\" not in name
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A short rendering of a field's value for a message."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
