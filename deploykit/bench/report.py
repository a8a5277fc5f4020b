"""Results of a benchmark run: the machine note, results.json, results.md and PNG plots."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine() -> dict[str, Any]:
    """Cores, CPU model, the SIMD flags that matter for INT8, load and library versions."""
    from deploykit.session import available_cpus

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for package in ("onnxruntime", "torch", "transformers", "optimum", "optimum-onnx", "bentoml", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu_model": model, "logical_cpus": os.cpu_count(), "usable_cpus": available_cpus(),
            "simd_flags": {f: f in flags for f in _FLAGS},
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "versions": versions}


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine note as a few Markdown lines."""
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in info["simd_flags"].items())
    load = info.get("load_average")
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    return (f"- CPU: {info['cpu_model']}; {info['logical_cpus']} logical CPUs, {info['usable_cpus']} usable\n"
            f"- Flags: {flags}\n"
            f"- Load average at the start (1/5/15 min): {', '.join(f'{x:.2f}' for x in load) if load else 'n/a'}\n"
            f"- Python {info['python']}; {versions}\n")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def offline_markdown(results: dict[str, Any]) -> str:
    """Tables of an offline run: throughput (and ratio to PyTorch), latency, memory."""
    cells = results["cells"]
    engines = list(results["engines"])
    lines = [f"# Offline benchmark: {results['model']}", "",
             f"Artifact `{results['artifact']}`; all engines truncate at {results['max_length']} tokens; "
             f"wall time {results['wall_s']:.0f} s. Engines ran one at a time, each in its own "
             "process, in an order that rotates per cell. Compare within a run, not across runs.", "",
             machine_markdown(results["machine"])]
    for set_name, info in results["inputs"].items():
        batches = info["batch_sizes"]
        lines += [f"## {set_name} (mean {info['mean_tokens']:.1f} tokens, max {info['max_tokens']})", "",
                  "Throughput, texts/s (x PyTorch eager):", "",
                  "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        by = {(c["engine"], c["batch_size"]): c for c in cells if c["input"] == set_name}
        for engine in engines:
            row = []
            for b in batches:
                c = by.get((engine, b))
                ratio = c and c.get("throughput_vs_pytorch")
                row.append("-" if c is None else f"{c['texts_per_s']:.1f}" + (f" ({ratio:.2f}x)" if ratio else ""))
            lines.append(f"| {engine} | " + " | ".join(row) + " |")
        lines += ["", "Latency per call, p50 / p95 / p99 ms; tokens/s:", "",
                  "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for engine in engines:
            row = []
            for b in batches:
                c = by.get((engine, b))
                row.append("-" if c is None else f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} / "
                           f"{c['p99_ms']:.1f}; {c['tokens_per_s']:.0f} tok/s ({c['iters']} calls)")
            lines.append(f"| {engine} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Memory and load time (each engine in its own process)", "",
              "| engine | peak RSS MiB | RSS after load MiB | load s |", "|---|---|---|---|"]
    for engine, info in results["engines"].items():
        lines.append(f"| {engine} | {info['peak_rss_mb']:.0f} | {info['rss_after_load_mb']:.0f} | {info['load_s']:.1f} |")
    return "\n".join(lines) + "\n"


def online_markdown(results: dict[str, Any]) -> str:
    """Tables of an online run: each level's rate, latency and error counts."""
    lines = [f"# Online benchmark: {results['target']}", "",
             f"Protocol `{results['protocol']}`, {results['config']['texts_per_request']} text(s) per "
             f"request, {results['config']['duration']:.0f} s per level; client on the same machine.", "",
             machine_markdown(results["machine"]),
             "| level | requests | ok | req/s | texts/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for level in results["levels"]:
        errors = ", ".join(f"{k}: {v}" for k, v in level["errors"].items()) or "0"
        lines.append(f"| {level['label']} | {level['requests']} | {level['ok']} | "
                     f"{level['requests_per_s']:.1f} | {level['texts_per_s']:.1f} | {_fmt(level['p50_ms'])} | "
                     f"{_fmt(level['p95_ms'])} | {_fmt(level['p99_ms'])} | {errors} |")
    return "\n".join(lines) + "\n"


def _plot_offline(out: Path, results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results["inputs"])
    files = []
    for what, key, ylabel in (("throughput", "texts_per_s", "texts / s"), ("latency", None, "ms per call")):
        fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
        for ax, set_name in zip(axes[0], sets):
            for i, engine in enumerate(results["engines"]):
                cells = sorted((c for c in results["cells"] if c["input"] == set_name and c["engine"] == engine),
                               key=lambda c: c["batch_size"])
                xs = [c["batch_size"] for c in cells]
                if key:
                    ax.plot(xs, [c[key] for c in cells], marker="o", label=engine)
                else:
                    line, = ax.plot(xs, [c["p50_ms"] for c in cells], marker="o", label=f"{engine} p50")
                    ax.plot(xs, [c["p99_ms"] for c in cells], linestyle="--", color=line.get_color(),
                            label=f"{engine} p99")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_title(set_name)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"offline {what}: {results['model']}")
        fig.tight_layout()
        name = f"offline_{what}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _plot_online(out: Path, results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [lv for lv in results["levels"] if lv["mode"] == "closed"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [lv["concurrency"] for lv in closed]
    left.plot(xs, [lv["texts_per_s"] for lv in closed], marker="o")
    left.set_xlabel("concurrency")
    left.set_ylabel("texts / s")
    left.set_title("throughput")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        right.plot(xs, [lv[key] for lv in closed], marker="o", label=key.split("_")[0])
    right.set_xlabel("concurrency")
    right.set_ylabel("ms per request")
    right.set_yscale("log")
    right.set_title("latency")
    right.legend()
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"online ({results['protocol']}): {results['target']}")
    fig.tight_layout()
    fig.savefig(out / "online.png", dpi=110)
    plt.close(fig)
    return ["online.png"]


def write(out: Path, results: dict[str, Any]) -> None:
    """Write results.json, results.md and the plots of an offline or online run into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if results["kind"] == "offline":
        markdown, plots = offline_markdown(results), _plot_offline(out, results)
    else:
        markdown, plots = online_markdown(results), _plot_online(out, results)
    results["plots"] = plots
    markdown += "\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(markdown)
