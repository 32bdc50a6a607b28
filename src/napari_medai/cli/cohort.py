"""``napari-medai cohort segment|classify MANIFEST``: run a model on a whole cohort, resumable.

MANIFEST is a CSV with a ``path`` column (or scan paths in the first column),
a folder of scans, or a glob pattern. Outputs go to ``--out`` named by each
scan's stable id, with a run record (``cohort_record.jsonl`` and ``.csv``); a
re-run skips finished scans and retries failed or changed ones. ``--engine
ray`` runs on Ray (``--address`` joins a running cluster; without it Ray starts
on this machine). Exit code 0 when every scan is done, 1 when some failed.
What the run decided on its own (paths in an output folder left out, scans
outside the manifest's folder, record rows not trusted) is printed as
``warning:`` lines under the summary.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TextIO

from napari_medai.cli.options import add_trust_bundle

#: Cohort tasks this command offers.
TASK_HELP = {
    "segment": "segment every scan and save each mask on its scan's grid",
    "classify": "classify every whole scan and save each result as <id>_class.json",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cohort`` sub-command with one sub-command per task."""
    parser = subparsers.add_parser("cohort", help="run a model on a whole cohort (local or Ray)")
    tasks = parser.add_subparsers(dest="task", required=True)
    for task, text in TASK_HELP.items():
        sub = tasks.add_parser(task, help=text)
        sub.add_argument("manifest", help="CSV of scan paths, a folder of scans, or a glob")
        sub.add_argument("--model", required=True, help="model name, package, file or bundle")
        sub.add_argument("--out", required=True, type=Path, help="folder for outputs and record")
        sub.add_argument("--engine", default="local", choices=("local", "ray"))
        sub.add_argument("--address", help="Ray cluster address (default: start Ray here)")
        sub.add_argument("--workers", type=int, default=1, help="Ray workers (default 1)")
        sub.add_argument(
            "--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker requests"
        )
        sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
        sub.add_argument("--tta", action="store_true", help="average over flipped copies")
        add_trust_bundle(sub)
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the cohort with a progress line, then print the summary table and any warnings."""
    from napari_medai.core.cohort.manifest import CohortWarning, read_manifest
    from napari_medai.core.cohort.run import EngineConfig, cohort_job
    from napari_medai.core.cohort.tasks import TaskSpec
    from napari_medai.core.jobs import run_job

    spec = TaskSpec(args.task, str(args.model), args.device, args.tta, args.trust_bundle)
    engine = EngineConfig(args.engine, args.workers, args.address, args.gpus_per_worker)
    out = sys.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CohortWarning)
        items = read_manifest(args.manifest)
        job = cohort_job(items, spec, args.out, engine)
        try:
            summary = run_job(job, lambda event: _draw(event, out))
        finally:
            job.close()
            out.write("\n")
    said = [str(w.message) for w in caught if issubclass(w.category, CohortWarning)]
    for other in (w for w in caught if not issubclass(w.category, CohortWarning)):
        warnings.showwarning(other.message, other.category, other.filename, other.lineno)
    _print_summary(summary, said)
    return 0 if summary.failed == 0 else 1


def _draw(event, out: TextIO) -> None:
    progress = event.payload
    filled = int(round(30 * min(max(event.fraction, 0.0), 1.0)))
    bar = "#" * filled + "." * (30 - filled)
    eta = "--" if progress.eta_s is None else _clock(progress.eta_s)
    out.write(
        f"\r[{bar}] {progress.finished}/{progress.total} "
        f"({progress.done} done, {progress.failed} failed, {progress.skipped} skipped) "
        f"{progress.rate:.2f} scans/s ETA {eta}  "
    )
    out.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _print_summary(summary, said: list[str]) -> None:
    print(f"{'scan':<40} {'status':<7} {'seconds':>8}  reason")
    for row in summary.rows:
        seconds = row.get("seconds", {}).get("total", 0.0)
        print(f"{row['id']:<40} {row['status']:<7} {seconds:>8.2f}  {row.get('error', '')}")
    print(
        f"{summary.done} done / {summary.failed} failed / {summary.skipped} skipped "
        f"of {summary.skipped + len(summary.rows)} in {summary.seconds:.1f} s; "
        f"record: {summary.table}"
    )
    for text in said:
        print(f"warning: {text}")
