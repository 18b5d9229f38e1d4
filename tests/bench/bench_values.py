"""A big task value end to end: ``shoal run`` of one shell task printing a
~20 MB value, on one local agent (``shoal agent`` subprocess on 127.0.0.1).

    .venv/bin/python tests/bench/bench_values.py [--mb 20] [--rounds 3]

Prints, per kind of value, the wall time of ``shoal run`` (engine start to
exit, the result stored and printed) against the same job printing a few
bytes, and the peak RSS of the engine (the ``shoal run`` process) and of the
agent (VmHWM, read before it stops). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from demos.cluster import LocalCluster  # noqa: E402

# Each prints about N bytes on stdout: a JSON list of ints, a JSON string, or a tiny value.
PRINTERS = {
    "json list of ints": "import json, sys; n = int(sys.argv[1]); print(json.dumps(list(range(n // 9))))",
    "json string": "import sys; n = int(sys.argv[1]); print('\"' + 'x' * (n - 3) + '\"')",
    "tiny (baseline)": "print(1)",
}


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_once(cluster: LocalCluster, job: Path) -> tuple[float, int, int]:
    """(seconds, engine peak RSS KiB, exit status) of one ``shoal run``."""
    env = {**os.environ, "SHOAL_STATE_DIR": str(cluster.state_dir), "SHOAL_CONFIG_DIR": str(cluster.config_dir)}
    argv = [sys.executable, "-m", "console.cli", "run", str(job), "--node", cluster.addresses[0], "--json"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; value of {size:,} bytes")
    for name, code in PRINTERS.items():
        with tempfile.TemporaryDirectory(prefix="shoal-bench-values-") as tmp, LocalCluster(Path(tmp), [1]) as cluster:
            times, rss = [], []
            for round_ in range(args.rounds):
                job = Path(tmp) / f"job{round_}.toml"  # a new job each round (a new file is a new job)
                job.write_text(
                    f'command = ["python3", "-c", {json.dumps(code)}, "{{item}}"]\nitems = [{size}]\n'
                    'max_result = "64MiB"\nreduce = "collect"\n'
                )
                elapsed, engine_kib, status = run_once(cluster, job)
                assert status == 0, f"shoal run exited {status}"
                times.append(elapsed)
                rss.append(engine_kib)
            agent_kib = peak_rss_kib(cluster.agents[0].proc.pid)  # type: ignore[union-attr]
        print(
            f"{name:>18}: shoal run {statistics.median(times):.2f} s (median of {args.rounds}), "
            f"engine peak RSS {max(rss) / 1024:.0f} MiB, agent peak RSS {agent_kib / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
