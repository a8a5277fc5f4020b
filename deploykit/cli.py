"""The ``deploykit`` command: subcommands that build a config and call a stage's ``run``.

No logic lives here. Flags are generated from the stage's config dataclass, so a flag, its
YAML key and its help text can never drift apart. Heavy imports (torch, transformers) happen
inside the stage, so ``deploykit serve --help`` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from typing import Any, Callable

from deploykit import __version__, extras
from deploykit.config import (BenchOfflineConfig, BenchOnlineConfig, BuildConfig, EvalConfig,
                              ExportConfig, PredictConfig, ServeConfig, TrainConfig, TritonConfig,
                              VerifyConfig, from_dict, load_yaml)
from deploykit.config import ContainerizeConfig, KubeConfig
from deploykit.config import DemoConfig
from deploykit.errors import DeployKitError

log = logging.getLogger("deploykit")

# The extra each command needs on every run (the extras themselves are defined in
# pyproject.toml; deploykit.extras reads them back). Commands that need one only on some runs
# (k8s with validation, bench offline's PyTorch engines) check where they need it, or fall back
# on the ModuleNotFoundError handler in main.
NEEDS = {"train": "train", "evaluate": "train", "export": "train", "verify": "train",
         "demo": "demo", "bench offline": "bench", "bench online": "bench"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, with_config_file: bool = True) -> None:
    """Add one flag per field of a config dataclass (defaults suppressed, so the file can fill them)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="?" if with_config_file else None,
                                default=argparse.SUPPRESS, help=help_text)
            continue
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
            continue
        base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
        kind = base[0] if base[0] in (int, float, str) else str
        parser.add_argument(_flag(f.name), type=kind, choices=meta.get("choices"),
                            default=argparse.SUPPRESS, metavar=f.name.upper() if not meta.get("choices") else None,
                            help=help_text if "(default" in help_text else f"{help_text} (default: {default})")
    if with_config_file:
        parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                            help="Flat YAML file with the same keys as the flags (underscores); "
                                 "flags override it.")


def build_config(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """Defaults < ``base`` (e.g. environment variables) < YAML file (--config) < flags."""
    values = vars(args).copy()
    values.pop("command", None)
    values.pop("func", None)
    values.pop("verbose", None)
    values.pop("bench_command", None)
    config_file = values.pop("config", None)
    merged = dict(base or {})
    merged.update(load_yaml(config_file) if config_file else {})
    merged.update(values)
    return from_dict(cls, merged, source=config_file or "the command line")


def _train(args: argparse.Namespace) -> None:
    import json
    import os

    from deploykit import train

    best = train.run(build_config(TrainConfig, args))
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = json.loads((best / "metrics.json").read_text())
        print(f"best checkpoint: {best} (step {metrics['step']})")
        keys = ("macro_f1", "accuracy", "weighted_f1", "entity_f1", "token_accuracy", "bleu", "chrf", "exact_match",
                "loss", "perplexity")
        print("validation: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics))


def _evaluate(args: argparse.Namespace) -> None:
    from deploykit import evaluation

    print(evaluation.summary(evaluation.run(build_config(EvalConfig, args))))


def _export(args: argparse.Namespace) -> None:
    from deploykit import export

    export.run(build_config(ExportConfig, args))


def _verify(args: argparse.Namespace) -> None:
    from deploykit import export

    export.verify(build_config(VerifyConfig, args))


def _serve(args: argparse.Namespace) -> None:
    from deploykit.serve import launch, settings

    # The DEPLOYKIT_* variables (what containers set) apply unless a flag or the file says otherwise.
    base: dict[str, Any] = dict(settings.env_values())
    if os.environ.get(settings.ARTIFACT_ENV):
        base["artifact"] = os.environ[settings.ARTIFACT_ENV]
    launch.run(build_config(ServeConfig, args, base=base))


def _build(args: argparse.Namespace) -> None:
    from deploykit.serve import build

    print(build.run(build_config(BuildConfig, args)))


def _predict(args: argparse.Namespace) -> None:
    cfg = build_config(PredictConfig, args)
    if cfg.engine == "ray":
        from deploykit.scale import ray

        ray.run(cfg)
    else:
        from deploykit import predict

        predict.run(cfg)


def _containerize(args: argparse.Namespace) -> None:
    from deploykit.deploy import containerize

    print(containerize.run(build_config(ContainerizeConfig, args)))  # NAME@sha256:..., for scripts


def _k8s(args: argparse.Namespace) -> None:
    from deploykit.deploy import k8s

    k8s.render(build_config(KubeConfig, args))


def _triton(args: argparse.Namespace) -> None:
    from deploykit.serve import triton_repo

    triton_repo.run(build_config(TritonConfig, args))


def _bench_offline(args: argparse.Namespace) -> None:
    from deploykit.bench import offline

    out = offline.run(build_config(BenchOfflineConfig, args))
    print(f"offline benchmark: {out}/results.md")


def _bench_online(args: argparse.Namespace) -> None:
    from deploykit.bench import online

    out = online.run(build_config(BenchOnlineConfig, args))
    print(f"online benchmark: {out}/results.md")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """``deploykit bench offline|online``: a nested subcommand, flags from each config."""
    help_text = "Benchmark latency and throughput: offline (engines side by side) or online (load on a server)."
    bench = sub.add_parser("bench", help=help_text, description=help_text)
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="MODE", required=True)
    for name, text, cls, func in (
            ("offline", "PyTorch eager, Optimum's ORTModel and deploykit's runtime per variant on the "
                        "same texts, each in its own process: p50/p95/p99, texts/s, tokens/s, peak "
                        "memory, ratios to PyTorch.", BenchOfflineConfig, _bench_offline),
            ("online", "Asyncio load generator against a running service (closed loop per "
                       "concurrency, optional open loop): req/s, texts/s, p50/p95/p99, errors.",
             BenchOnlineConfig, _bench_online)):
        p = bench_sub.add_parser(name, help=text, description=text)
        add_config_arguments(p, cls)
        p.set_defaults(func=func)


def _demo(args: argparse.Namespace) -> None:
    from deploykit import demo

    summary = demo.run(build_config(DemoConfig, args))
    print(summary.read_text(), flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests to check README commands)."""
    parser = argparse.ArgumentParser(
        prog="deploykit",
        description="Fine-tune a text classifier, export it to verified ONNX and serve it.")
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands: list[tuple[str, str, type, Callable]] = [
        ("train", "Fine-tune a pretrained encoder (text-classification) or decoder-only language "
                  "model (text-generation) and keep the best checkpoint (also under torchrun for "
                  "multi-process data parallel).", TrainConfig, _train),
        ("evaluate", "Score a checkpoint on a split: metrics (classification: accuracy/F1, per "
                     "class; generation: BLEU, chrF, exact match, loss), length buckets, slices, "
                     "error cases, plots.", EvalConfig, _evaluate),
        ("export", "Export a checkpoint to an ONNX artifact (fp32, fused, INT8) verified for "
                   "parity against PyTorch on held-out rows.", ExportConfig, _export),
        ("verify", "Re-check an artifact: every file's sha256, then parity of every variant "
                   "against its checkpoint.", VerifyConfig, _verify),
        ("serve", "Serve an artifact: BentoML service with /classify, the KServe v2 / Triton "
                  "protocol, health and Prometheus metrics.", ServeConfig, _serve),
        ("build", "Pack an artifact, the service and deploykit into a bento (bentoml build).",
         BuildConfig, _build),
        ("predict", "Score CSV/JSON/JSONL/Parquet files (a file, a folder or a URL) with an artifact, "
                    "torch-free, in this process or on Ray (--engine ray): JSONL, or Parquet parts "
                    "with a completion marker.", PredictConfig, _predict),
        ("triton", "Write a Triton Inference Server model repository (ONNX model, tokenizer, "
                   "postprocess, ensemble, Python-backend model) from an artifact.",
         TritonConfig, _triton),
        ("containerize", "Build a container image of a bento or an artifact (bentoml "
                         "containerize with docker, buildah or podman), or the training image.",
         ContainerizeConfig, _containerize),
        ("k8s", "Render a ready kustomize overlay of k8s/ (the service, or the multi-node "
                "training Job) with your image and values.", KubeConfig, _k8s),
        ("demo", "The whole pipeline on the built-in tweets and the packaged MiniLM: train, "
                 "evaluate, export, build, serve, benchmark, Triton repository, Kubernetes "
                 "overlay, one summary.", DemoConfig, _demo),
    ]
    for name, help_text, cls, func in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(p, cls)
        p.set_defaults(func=func)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deploykit`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    command = " ".join(filter(None, [args.command, getattr(args, "bench_command", None)]))
    try:
        if command in NEEDS:
            extras.require(command, NEEDS[command])
        args.func(args)
    except DeployKitError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        # An optional dependency a command reached for: say which extra installs it, exit 2.
        error = extras.missing_module_error(command, exc)
        if error is None:
            raise
        log.error("%s", error)
        return error.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
