"""The suite's route fuzz (tests/fuzz_bodies.py) at benchmark size, against `deploykit serve`.

Each artifact is served with default settings on a free 127.0.0.1 port and gets ``--examples``
mutated requests of its routes (a classifier: the v2 route, JSON and binary-tensor bodies; a
text generator: /generate and the OpenAI routes, with ``--max-new-tokens`` as the server's
limit); no answer may be a 5xx, and the server log must hold no traceback. Writes the status
counts, the seed, the time per artifact and ``uptime`` before and after to ``--out``
(``results.json`` and ``results.md``); exits 1 when any answer was a 5xx or the log holds a
traceback.

    python3 benchmarks/fuzz_routes.py --artifact demo/artifact --examples 20000 \\
        --out benchmarks/results/fuzz_routes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from deploykit.bench.report import machine, machine_markdown  # noqa: E402
from deploykit.manifest import Manifest  # noqa: E402
from deploykit.serve.launch import free_port, stop_process_group  # noqa: E402
from fuzz_bodies import SEED, fuzz, generation_case, has_traceback, v2_case  # noqa: E402
from fair_admission import uptime  # noqa: E402
from serving_compare import wait_ready  # noqa: E402


def run(artifact: Path, examples: int, max_new_tokens: int, work: Path) -> dict:
    manifest = Manifest.read(artifact)
    port = free_port()
    log = work / f"{manifest.name}.log"
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    extra = ["--max-new-tokens", str(max_new_tokens)] if manifest.task == "text-generation" else []
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", str(artifact), "--port", str(port), *extra],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/readyz", log)
        strategy = (generation_case(manifest.name, max_new_tokens) if manifest.task == "text-generation"
                    else v2_case(manifest.name))
        start = time.perf_counter()
        statuses = fuzz(url, strategy, examples)
        seconds = time.perf_counter() - start
    finally:
        stop_process_group(proc, timeout=60)
    text = log.read_text()
    # The first traceback, kept: the server's log goes with the temporary folder.
    header = "Traceback (most recent call last)"
    first = text[text.index(header):].splitlines()[:80] if has_traceback(text) else []
    return {"artifact": str(artifact), "task": manifest.task, "examples": examples, "seed": SEED,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "seconds": round(seconds, 1),
            "five_xx": sum(v for k, v in statuses.items() if k >= 500), "traceback_in_log": has_traceback(text),
            "first_traceback": "\n".join(first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", action="append", required=True, help="repeat for several artifacts")
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = parser.parse_args()
    results = {"machine": machine(), "uptime_before": uptime(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="dk-fuzz-") as tmp:
        for artifact in args.artifact:
            r = run(Path(artifact).resolve(), args.examples, args.max_new_tokens, Path(tmp))
            print(json.dumps(r), flush=True)
            results["runs"].append(r)
    results["uptime_after"] = uptime()
    lines = [f"# Route fuzz at {args.examples} examples per artifact", "",
             f"`python3 benchmarks/fuzz_routes.py {' '.join(sys.argv[1:])}`", "",
             machine_markdown(results["machine"]).rstrip(), f"- `{results['uptime_before']}` before, "
             f"`{results['uptime_after']}` after", "",
             "| artifact | task | examples | seed | statuses | 5xx | traceback in log | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(f"| {r['artifact']} | {r['task']} | {r['examples']} | {r['seed']} | {statuses} "
                     f"| {r['five_xx']} | {'yes' if r['traceback_in_log'] else 'no'} | {r['seconds']} |")
    for r in results["runs"]:
        if r["first_traceback"]:
            lines += ["", f"First traceback in the log of {r['artifact']}:", "", "```", r["first_traceback"], "```"]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text("\n".join(lines) + "\n")
    if any(r["five_xx"] or r["traceback_in_log"] for r in results["runs"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
