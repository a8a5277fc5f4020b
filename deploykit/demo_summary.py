"""The demo's one summary: facts gathered from the stages, written as summary.json and summary.md."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from deploykit.manifest import Manifest, Variant

VARIANT_TITLES = {"fp32": "ONNX fp32", "opt": "ONNX fused attention (opt)", "int8": "ONNX INT8"}


def export_facts(manifest: Manifest, checkpoint: Path) -> dict[str, Any]:
    """Held-out metrics, sizes and parity of every variant, from the artifact's manifest.

    Args:
        manifest: The artifact's manifest.
        checkpoint: The PyTorch checkpoint the artifact came from (for its weights' size).

    Returns:
        ``{"default_variant", "reference_metrics", "pytorch_bytes", "variant_facts": {name: {...}}}``.
    """
    weights = checkpoint / "model.safetensors"
    return {
        "default_variant": manifest.default_variant,
        "held_out_rows": manifest.evaluation.n if manifest.evaluation else None,
        "reference_metrics": {k: manifest.reference_metrics[k] for k in ("accuracy", "macro_f1")},
        "pytorch_bytes": weights.stat().st_size if weights.is_file() else None,
        "variant_facts": {name: {"file": v.file, "bytes": v.bytes, "servable": v.servable,
                            "fused_ops": dict(v.fused_ops),
                            "metrics": {k: v.metrics[k] for k in ("accuracy", "macro_f1")},
                            "parity": dict(v.parity), **_fallback_facts(v)}
                     for name, v in manifest.variants.items()},
    }


def _fallback_facts(variant: Variant) -> dict[str, Any]:
    """What export's INT8 search kept in float (``{}`` unless the variant came from the search)."""
    quantization = variant.quantization or {}
    record = quantization.get("fallback", {})
    if record.get("mode") != "auto":
        return {}
    return {"fallback": {"float_nodes": quantization["float_nodes"], "candidates": record.get("candidates"),
                         "rows": record.get("rows")}}


def next_commands(report: dict[str, Any]) -> list[str]:
    """The commands a user runs next on what the demo wrote."""
    out = Path(report["out"])
    home = report.get("bentoml_home")
    prefix = f"BENTOML_HOME={shlex.quote(home)} " if home else ""
    return [f"deploykit serve {shlex.quote(str(out / 'artifact'))}",
            f"{prefix}deploykit containerize {report['bento']}",
            f"kubectl apply -k {shlex.quote(str(out / 'k8s'))}"]


def write_json(out: Path, report: dict[str, Any]) -> Path:
    """Write DIR/summary.json (keys starting with '_' are working data and stay out)."""
    path = out / "summary.json"
    path.write_text(json.dumps({k: v for k, v in report.items() if not k.startswith("_")},
                               indent=2, default=str) + "\n")
    return path


def _mb(size: int | None) -> str:
    return f"{size / 1e6:.1f} MB" if size else "-"


def _quality(report: dict[str, Any]) -> list[str]:
    ex, ev, base = report["export"], report["evaluate"], report["baseline"]["test"]
    rows = ["| model | accuracy | macro-F1 | size |", "|---|---|---|---|",
            f"| {report['baseline']['name']} (same {report['data']['train_rows']} training rows) | "
            f"{base['accuracy']:.4f} | {base['macro_f1']:.4f} | - |",
            f"| PyTorch checkpoint (fine-tuned MiniLM) | {ev['accuracy']:.4f} | {ev['macro_f1']:.4f} | "
            f"{_mb(ex['pytorch_bytes'])} |"]
    for name, v in ex["variant_facts"].items():
        rows.append(f"| {VARIANT_TITLES.get(name, name)} | {v['metrics']['accuracy']:.4f} | "
                    f"{v['metrics']['macro_f1']:.4f} | {_mb(v['bytes'])} |")
    gain = 100 * (ev["macro_f1"] - base["macro_f1"])
    if gain > 0:
        verdict = f"beats the baseline on the held-out split by {gain:.1f} macro-F1 points."
    else:
        verdict = (f"is {-gain:.1f} macro-F1 points BELOW the baseline on the held-out split"
                   + (" (--quick trains a few steps to show the path; it has no quality bar)."
                      if report["mode"] == "quick" else "."))
    rows += ["", f"The fine-tuned model {verdict}"]
    return rows


def _parity(report: dict[str, Any]) -> list[str]:
    gates = report["export"]["gates"]
    rows = [f"Gates: fp32 and fused within 1e-4 of PyTorch's logits with identical labels; INT8 "
            f"label agreement >= {gates['int8_min_agreement']} and macro-F1 drop <= "
            f"{100 * gates['int8_max_f1_drop']:.0f} point(s)"
            + (" (loosened in --quick: a model trained a few steps has near-tied logits)."
               if report["mode"] == "quick" else " (export's defaults)."), *_float_operators(report), "",
            "| variant | max abs logit diff | label agreement | macro-F1 drop | servable | fused ops |",
            "|---|---|---|---|---|---|"]
    ref = report["export"]["reference_metrics"]["macro_f1"]
    for name, v in report["export"]["variant_facts"].items():
        p = v["parity"]
        ops = ", ".join(f"{op} {n}" for op, n in sorted(v["fused_ops"].items())) or "-"
        rows.append(f"| {name} | {p['max_abs_diff']:.2e} | {p['label_agreement']:.4f} | "
                    f"{100 * (ref - v['metrics']['macro_f1']):+.2f} pts | "
                    f"{'yes' if v['servable'] else 'NO (missed its gate)'} | {ops} |")
    return rows


def _float_operators(report: dict[str, Any]) -> list[str]:
    """One line on the operators INT8's fallback search kept in float, if it kept any."""
    search = report["export"]["variant_facts"].get("int8", {}).get("fallback") or {}
    if not search.get("float_nodes"):
        return []
    return ["", f"INT8 keeps {len(search['float_nodes'])} of {search['candidates']} quantizable operators "
                f"in float (the ones that quantize worst, measured on {search['rows']} validation rows) "
                f"to meet the agreement gate."]


def _speed(report: dict[str, Any]) -> list[str]:
    off, on = report["offline"], report["online"]
    engines = off["engines"]
    base = engines["pytorch"]
    rows = [f"Same {off['threads']} CPU thread(s) for every engine, side by side in one run; "
            "ratios are to PyTorch in-process (higher is better).", "",
            "| engine | latency p50 (1 text) | speed-up | throughput (texts/s) | ratio |",
            "|---|---|---|---|---|"]
    for name, e in engines.items():
        title = "PyTorch" if name == "pytorch" else VARIANT_TITLES.get(name, name)
        title += " (in-process)"
        rows.append(f"| {title} | {e['latency_ms_p50']:.1f} ms | {e['latency_speedup']:.2f}x | "
                    f"{e['throughput_texts_per_s']:.0f} | {e['throughput_ratio']:.2f}x |")
    variant = report["service"]["variant"]
    for level in on["levels"]:
        errors = sum((level["errors"] or {}).values())
        rows.append(f"| service /classify, {variant}, {level['label']} ({level['ok']} ok, {errors} errors) | "
                    f"{level['p50_ms']:.1f} ms | {base['latency_ms_p50'] / level['p50_ms']:.2f}x | "
                    f"{level['texts_per_s']:.0f} | "
                    f"{level['texts_per_s'] / base['throughput_texts_per_s']:.2f}x |")
    if off["not_servable"]:
        rows.append(f"| {', '.join(off['not_servable'])} | not servable (missed its parity gate): "
                    "not measured | | | |")
    rows += ["", f"Offline: `deploykit bench offline`, each engine in its own process: "
                 f"one-text calls (latency, {off['latency_texts']} or more per engine) and calls of {off['throughput_texts']} "
                 f"tweets (throughput); its full report: `{off['results']}`. Online: `deploykit bench "
                 "online` on 127.0.0.1, one-text requests (the service's dynamic batcher groups "
                 f"concurrent ones); its full report: `{on['results']}`."]
    return rows


def _answers(report: dict[str, Any]) -> list[str]:
    svc = report["service"]
    rows = [f"Model `{svc['model']}`, variant **{svc['variant']}**, at {svc['url']} (now stopped).", "",
            "| text | gold | /classify | score | v2 (tritonclient) |", "|---|---|---|---|---|"]
    for r in svc["rows"]:
        text = r["text"].replace("|", "\\|").replace("\n", " ")
        text = text if len(text) <= 70 else text[:67] + "..."
        rows.append(f"| {text} | {r['gold'] or '-'} | {r['classify']} | {r['score']:.3f} | {r['v2']} |")
    rows += ["", "/classify, the v2 route and the artifact run in-process gave the same labels."]
    return rows


def render(report: dict[str, Any]) -> str:
    """The summary as Markdown."""
    data, out = report["data"], Path(report["out"])
    minutes, seconds = divmod(int(round(report["total_seconds"])), 60)
    stages = ", ".join(f"{name} {s:.0f} s" for name, s in report["stages"].items())
    lines = [
        "# deploykit demo: summary", "",
        f"Mode **{report['mode']}**, {minutes} min {seconds:02d} s in all ({stages}); "
        f"{sum(report.get('stages_cpu_seconds', {}).values()):.0f} CPU seconds in the demo's own "
        "process (the service's not counted).",
        f"Data: the built-in tweets ({'a stratified sample, ' if report['mode'] == 'quick' else ''}"
        f"{data['train_rows']} training / {data['validation_rows']} validation / {data['test_rows']} "
        f"held-out test rows; labels {', '.join(data['labels'])}); model: the packaged MiniLM-L6, "
        f"{report['train']['steps']} steps, best at step {report['train']['best_step']}.", "",
        f"## Held-out quality (test split, {report['evaluate']['n']} rows)", "", *_quality(report), "",
        "## Parity of the ONNX variants with PyTorch", "", *_parity(report), "",
        "## Speed", "", *_speed(report), "",
        "## The service answered", "", *_answers(report), "",
        "## What was written", "",
        f"- training run: `{out / 'run'}` (best checkpoint in `checkpoint/`)",
        f"- evaluation: `{out / 'eval'}` (report.md, errors.jsonl, plots)",
        f"- artifact: `{out / 'artifact'}` (default variant {report['export']['default_variant']})",
        f"- bento: `{report['bento']}`"
        + (f" in `{report['bentoml_home']}`" if report.get("bentoml_home") else ""),
        f"- Triton model repository: `{report['triton_repo']}`",
        f"- Kubernetes overlay: `{report['k8s']}` (image `{report['bento']}`)",
        f"- logs: `{out / 'logs'}`", "",
        "## Next", "", "```bash", *next_commands(report), "```", "",
    ]
    return "\n".join(lines)


def write(out: Path, report: dict[str, Any]) -> Path:
    """Write DIR/summary.json and DIR/summary.md; returns the Markdown file."""
    report["next_commands"] = next_commands(report)
    report["beats_baseline"] = report["evaluate"]["macro_f1"] > report["baseline"]["test"]["macro_f1"]
    write_json(out, report)
    path = out / "summary.md"
    path.write_text(render(report))
    return path
