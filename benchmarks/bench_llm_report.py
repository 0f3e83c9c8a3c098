"""`vlit report` with an LLM (TagGPT labels, LLM complexity): peak memory at growing run sizes.

Builds, for each size, the run of ``bench_run_dir.py`` (N varied LLaVA conversations about the
50 real COCO images, imported), starts a scripted OpenAI-compatible server
(``tests/llm_servers.py``) in a process of its own that answers with its ``indicator_model``
(TagGPT tags from what the conversation asks plus a rare tag per rollout; complexity scores
with first-token log-probabilities), then runs ``vlit report RUN --labeller taggpt`` against it
(journal in the run, removed before each run so every request is sent) with WordLlama, under
``/usr/bin/time``. Prints each run's wall time, CPU seconds (user+sys) and peak RSS, and the
ratio of the peaks between the largest and the smallest size. ``--compare SRC`` also runs
another checkout's ``src`` (for example the commit before a change) on the same runs.

    .venv/bin/python benchmarks/bench_llm_report.py --sizes 20000 80000 --compare /tmp/old/src
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_run_dir import _BUILD, DATA, IMAGES, REPO

_SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from llm_servers import ScriptedServer, indicator_model

class Forgetful(ScriptedServer):
    def _pick(self, body):
        with self._record_lock:
            self.requests.clear()  # this benchmark reads nothing back
        return super()._pick(body)

server = Forgetful()
server.add_rule(indicator_model)
server.start()
print(server.url, flush=True)
time.sleep(1e9)
"""


def report(run: Path, src: Path, url: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of one `vlit report` with the LLM."""
    for journal in run.glob("*.sqlite*"):
        journal.unlink()
    command = ["/usr/bin/time", "-f", "%e %U %S %M", sys.executable, "-m", "vlit", "report"]
    command += [str(run), "--labeller", "taggpt", "--embedder", "wordllama", "--json"]
    command += ["--llm-base-url", url, "--llm-model", "scripted-model", "--parse-limit", "500"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    wall, user, system, peak_kb = done.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system), int(peak_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument("--compare", type=Path, help="another checkout's src, run as well")
    args = parser.parse_args()
    sources = {"this": REPO / "src"}
    if args.compare is not None:
        sources["compared"] = args.compare
    peaks: dict[str, list[float]] = {name: [] for name in sources}
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(REPO / "tests")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        print(f"{'samples':>8} {'src':<9} {'wall s':>7} {'CPU s':>7} {'peak MB':>8}")
        with tempfile.TemporaryDirectory() as folder:
            for size in args.sizes:
                run = Path(folder) / f"run{size}"
                dataset = f"{run}.json"
                subprocess.run(
                    [sys.executable, "-c", _BUILD, str(run), str(size), str(DATA), dataset],
                    check=True,
                )
                subprocess.run(
                    [sys.executable, "-m", "vlit", "import", dataset, "--out", str(run)]
                    + ["--format", "llava", "--images", str(IMAGES), "--json"],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                for name, src in sources.items():
                    wall, cpu, peak = report(run, src, url)
                    peaks[name].append(peak)
                    print(f"{size:>8} {name:<9} {wall:>7.1f} {cpu:>7.1f} {peak:>8.0f}", flush=True)
    finally:
        server.terminate()
        server.wait()
    for name, values in peaks.items():
        ratio = values[-1] / values[0]
        print(f"{name}: peak at {args.sizes[-1]} / at {args.sizes[0]} = {ratio:.2f}")


if __name__ == "__main__":
    main()
