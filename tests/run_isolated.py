"""Run each test file in its own pytest process, then print one aggregate line.

Why: MXNet 1.9.1 keeps process-global state (the threaded engine, MKLDNN
primitive caches).  Some sequences of earlier in-process work (e.g. the
distillation tests, then a fresh in-process training run) end in a segfault
inside ``MKLDNNBatchNormForwardImpl`` on an engine thread, although every file
passes on its own.  One process per file keeps test files independent, as the
CLI's own stages are (each runs in its own process).

Usage: ``python tests/run_isolated.py [pytest args...] [files or dirs]``.
Exit status: 0 only if every file passed and at least one test ran.
"""
import pathlib
import re
import subprocess
import sys
import time

COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def main(argv):
    opts = [a for a in argv if a.startswith("-")]
    targets = [pathlib.Path(a) for a in argv if not a.startswith("-")] or [pathlib.Path(__file__).parent]
    files = []
    for t in targets:
        files += sorted(t.glob("test_*.py")) if t.is_dir() else [t]
    totals, bad, start = {}, [], time.time()
    for f in files:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *opts, str(f)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        out = proc.stdout
        lines = [ln for ln in out.splitlines() if ln.strip()]
        summary = lines[-1] if lines else ""
        counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNT.findall(summary)}
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"{f}: {summary.strip('= ') or 'no summary'} [{time.time() - t0:.1f}s] {status}", flush=True)
        if proc.returncode != 0:
            bad.append(f)
            print(out[-6000:], flush=True)
            if not counts.get("failed") and not counts.get("error"):
                totals["error"] = totals.get("error", 0) + 1  # a crash with no pytest summary
    print(f"\nfiles: {len(files)}, wall time {time.time() - start:.0f}s")
    if bad:
        print("failed files: " + " ".join(map(str, bad)))
    failed = totals.get("failed", 0) + totals.get("error", 0)
    extra = f", {totals['skipped']} skipped" if totals.get("skipped") else ""
    print(f"{totals.get('passed', 0)} passed, {failed} failed{extra}")
    return 1 if bad or failed or not totals.get("passed") else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
