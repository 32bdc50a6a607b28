"""The hostile-input corpus through napari's reader and the ``info`` CLI, in child processes.

Fails on a crash (the child dies), a traceback (any error that is not a
MedaiError), a hang, a case slower than 5 s, napari and the CLI disagreeing, a
NIfTI that opens with another shape or affine than nibabel gives, or a case
whose expected outcome (see ``corpus.py``) does not happen. Two children run
side by side, each importing napari once; each has address-space, CPU-time
and core-dump limits.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from corpus import Case, build_corpus

RUNNER = Path(__file__).with_name("run_cases.py")
SRC = Path(__file__).resolve().parents[2] / "src"
#: Address space of one child: napari + SimpleITK + pydicom need about 2 GB of it.
MEMORY_LIMIT = 6 << 30
#: A refusal must come within this many seconds (issue 12 acceptance).
CASE_LIMIT_S = 5.0
WORKERS = 2


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (600, 600))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_chunk(chunk: list[tuple[int, Case]], work: Path, results: dict[int, dict]) -> None:
    """Run ``chunk`` in child processes; a crash restarts the child after the crashing case."""
    remaining = list(chunk)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    while remaining:
        cases_file = work / f"cases_{remaining[0][0]}.json"
        cases_file.write_text(json.dumps([case.to_dict() for _, case in remaining]))
        stderr_file = work / f"stderr_{remaining[0][0]}.txt"
        with stderr_file.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(RUNNER), str(cases_file)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                preexec_fn=_limits,
            )
            watchdog = threading.Timer(60 + 15 * len(remaining), process.kill)
            watchdog.start()
            current = None
            for line in process.stdout:
                if line.startswith("START "):
                    current = int(line.split()[1])
                elif line.startswith("{"):
                    outcome = json.loads(line)
                    results[remaining[outcome["index"]][0]] = outcome
            process.wait()
            watchdog.cancel()
        if current is None:
            if process.returncode != 0:
                raise RuntimeError(f"the runner failed: {stderr_file.read_text()[-2000:]}")
            break
        if remaining[current][0] not in results:
            tail = stderr_file.read_text()[-1500:]
            results[remaining[current][0]] = {"crash": process.returncode, "stderr": tail}
        remaining = remaining[current + 1 :]


def run_corpus(cases: list[Case], work: Path) -> list[dict]:
    """Every case's outcome, in order, from :data:`WORKERS` children in parallel."""
    results: dict[int, dict] = {}
    indexed = list(enumerate(cases))
    threads = [
        threading.Thread(target=_run_chunk, args=(indexed[k::WORKERS], work, results))
        for k in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results.get(index, {"missing": True}) for index in range(len(cases))]


def _named(case: Case, message: str) -> bool:
    path = Path(case.path)
    names = {path.name, path.parent.name if path.name == "DICOMDIR" else path.name}
    return any(name in message for name in names)


def judge(case: Case, outcome: dict) -> list[str]:
    """Everything wrong with one outcome, in words (empty when the case passed)."""
    if outcome.get("missing"):
        return ["no outcome recorded"]
    if "crash" in outcome:
        return [f"the process died (exit {outcome['crash']}): {outcome['stderr']}"]
    if outcome.get("hang"):
        return ["hung (no answer within the alarm)"]
    napari, cli = outcome["napari"], outcome["cli"]
    problems = []
    for who, result in (("napari", napari), ("cli", cli)):
        if "traceback" in result:
            problems.append(f"{who} traceback: {result['traceback'][-1200:]}")
        elif result.get("seconds", 0) > CASE_LIMIT_S:
            problems.append(f"{who} took {result['seconds']:.1f} s")
    if problems:
        return problems
    if napari["ok"] != (cli["code"] == 0):
        return [f"napari ok={napari['ok']} but the CLI exited {cli['code']}: {napari} {cli}"]
    if napari.get("pydicom"):
        return [f"differs from pydicom: {napari['pydicom']}"]
    if napari["ok"]:
        if len(napari["shapes"]) == 1 and napari["shapes"][0] != cli["shape"]:
            problems.append(f"shapes differ: napari {napari['shapes']} cli {cli['shape']}")
        if case.expect == "refuse":
            problems.append(f"opened, but should be refused ({case.match!r})")
        warnings = " ".join(napari["warnings"])
        if case.expect == "open" and case.match and case.match not in warnings:
            problems.append(f"no warning with {case.match!r}; warnings: {napari['warnings']}")
        reference = outcome.get("nibabel")
        if reference is not None:
            if reference["shape"] != napari["shapes"][0]:
                problems.append(f"nibabel shape {reference['shape']} vs {napari['shapes'][0]}")
            elif not np.allclose(reference["affine"], napari["affine"], atol=1e-3):
                problems.append(f"nibabel affine {reference['affine']} vs {napari['affine']}")
        return problems
    printed = cli["stderr"].replace("\r", "\n").splitlines()[-1:]  # after the progress bar
    if "napari_says" in napari or "declined" in napari:
        if "declined" in napari and case.expect != "declined":
            problems.append(f"napari-medai declined it: {napari['declined']}")
        if case.match.lower() not in " ".join(printed).lower():
            problems.append(f"CLI message lacks {case.match!r}: {printed}")
        return problems
    message = napari["message"]
    if printed != [f"napari-medai info: error: {message}"]:
        problems.append(f"messages differ: napari {message!r} cli {printed!r}")
    if case.expect == "open":
        problems.append(f"refused, but should open: {message}")
    if case.expect == "refuse" and case.match.lower() not in message.lower():
        problems.append(f"message lacks {case.match!r}: {message}")
    if not _named(case, message):
        problems.append(f"message does not name the file: {message}")
    return problems


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, optional_shared_data) -> tuple[list[Case], Path]:
    root = tmp_path_factory.mktemp("fuzz")
    return build_corpus(root / "cases", real=optional_shared_data), root


def test_corpus_is_large_enough(corpus):
    cases, _ = corpus
    assert len(cases) >= 150


def test_every_case_is_handled(corpus):
    cases, root = corpus
    outcomes = run_corpus(cases, root)
    failures = {}
    for case, outcome in zip(cases, outcomes):
        problems = judge(case, outcome)
        if problems:
            failures[f"{case.name} ({Path(case.path).name})"] = problems
    assert not failures, json.dumps(failures, indent=1)[:20000]
