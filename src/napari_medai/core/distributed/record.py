"""The run record: one JSON line per finished scan in the output folder.

Appending a line (flushed and synced) is the only write while a run goes on,
so killing the driver loses at most the line being written; a torn last line
is ignored on reading. The latest line per scan id wins. At the end of a run
the latest rows are also written atomically as a CSV table for people and
spreadsheets. A re-run skips scans that are done with the same fingerprint,
settings and outputs still present; failed, new and changed scans run again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_medai.core.distributed.manifest import ScanItem
from napari_medai.core.files import atomic_write

RECORD_FILE = "cohort_record.jsonl"
TABLE_FILE = "cohort_record.csv"
TABLE_COLUMNS = (
    "id",
    "input",
    "status",
    "error",
    "input_sha256",
    "fingerprint",
    "outputs",
    "output_sha256",
    "seconds",
    "finished",
    "task",
)


class RunRecord:
    """The record of a cohort run in ``out``; reads what earlier runs left."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / RECORD_FILE
        self.latest: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a killed driver: that scan simply runs again
                if isinstance(row, dict) and "id" in row:
                    self.latest[row["id"]] = row

    def why_run(self, item: ScanItem, task_key: str) -> str | None:
        """``None`` when ``item`` is done and unchanged, else why it runs: new/failed/changed."""
        row = self.latest.get(item.id)
        if row is None:
            return "new"
        if row.get("status") != "done":
            return "failed"
        unchanged = row.get("fingerprint") == item.fingerprint and row.get("task") == task_key
        present = all((self.out / name).is_file() for name in row.get("outputs", []))
        return None if unchanged and present else "changed"

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
