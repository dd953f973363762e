"""Run one benchmark against two revisions of splade-es in the same minutes: did a change make
it slower?

Each revision is checked out in a throwaway git worktree and runs its own copy of the benchmark
script, with that worktree first on PYTHONPATH; the command line and the data are the same.
Runs alternate (base, change, base, change, ...) so that a machine getting busier or quieter
shows in both, and the table prints every figure the benchmark printed that matches
``--metric``, per run and as the median of each side.

    python benchmarks/revisions.py --base d8896c0 --metric 'docs/s' --rounds 3 -- \
        benchmarks/encode.py --model ../shared/models/splade-tiny --data ../shared/data/scifact \
        --docs 200

``--metric`` is a regular expression with one group that captures a number from the
benchmark's output (default: the first number after ``docs/s``-like units in a table row).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worktree(revision: str, into: Path) -> Path:
    """A checkout of ``revision`` (``HEAD`` means the working tree itself, edits included)."""
    if revision == "WORKTREE":
        return REPO
    path = into / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), revision],
        check=True,
        capture_output=True,
    )
    return path


def run_once(package_root: Path, command: list[str]) -> tuple[str, float]:
    env = dict(
        os.environ, PYTHONPATH=f"{package_root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    # The revision's own copy of the script (its imports match its package); arguments such as
    # data paths stay relative to this repository.
    script = package_root / command[0]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), *command[1:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed under {package_root}:\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - started


def figures(output: str, metric: re.Pattern[str]) -> list[float]:
    return [float(match.group(1)) for match in metric.finditer(output)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the baseline revision (a commit, a tag)")
    parser.add_argument(
        "--change", default="WORKTREE", help="the revision to compare (default: this working tree)"
    )
    parser.add_argument("--metric", required=True, help="regex with one group capturing a number")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [its arguments]")
    args = parser.parse_args()
    command = [part for part in args.command if part != "--"]
    if not command:
        parser.error("give the benchmark after --")
    metric = re.compile(args.metric)
    with tempfile.TemporaryDirectory(prefix="splade-es-revisions-") as scratch:
        roots = {
            "base": worktree(args.base, Path(scratch)),
            "change": worktree(args.change, Path(scratch)),
        }
        try:
            results: dict[str, list[list[float]]] = {"base": [], "change": []}
            for round_number in range(1, args.rounds + 1):
                for side in ("base", "change"):
                    output, seconds = run_once(roots[side], command)
                    found = figures(output, metric)
                    results[side].append(found)
                    print(f"round {round_number} {side:6} {seconds:6.1f}s  {found}", flush=True)
                    if round_number == 1:
                        print(output, flush=True)
            report(results, args.base, args.change)
        finally:
            for root in roots.values():
                if root != REPO:
                    subprocess.run(
                        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(root)],
                        check=False,
                        capture_output=True,
                    )


def report(results: dict[str, list[list[float]]], base: str, change: str) -> None:
    columns = min(len(run) for runs in results.values() for run in runs)
    print(f"\n| figure | base {base} (median) | change {change} (median) | change / base |")
    print("|---|---|---|---|")
    for column in range(columns):
        base_median = statistics.median(run[column] for run in results["base"])
        change_median = statistics.median(run[column] for run in results["change"])
        ratio = change_median / base_median if base_median else float("nan")
        print(f"| #{column + 1} | {base_median:g} | {change_median:g} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
