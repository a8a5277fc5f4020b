"""The training loop end to end on tiny models: learning, best checkpoint, early stop, resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deploykit import train
from deploykit.config import TrainConfig
from deploykit.serve.launch import free_port as _free_port

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _rows(run_dir, kind):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if json.loads(l)["type"] == kind]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, pretrained_dir, learnable_csv):
    out = tmp_path_factory.mktemp("learned") / "run"
    train.run(TrainConfig(data=str(learnable_csv), model=str(pretrained_dir), out=str(out), epochs=6,
                          batch_size=16, lr=1e-2, warmup_ratio=0.0, eval_every=10, log_every=1))
    return out


def test_loss_goes_down_and_the_task_is_learned(learned_run):
    losses = [r["loss"] for r in _rows(learned_run, "train")]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    best = json.loads((learned_run / "checkpoint" / "metrics.json").read_text())
    assert best["macro_f1"] > 0.9
    assert set(best) >= {"accuracy", "macro_f1", "weighted_f1", "per_class", "n", "step"}
    assert (learned_run / "train_curve.png").stat().st_size > 1000


def test_best_checkpoint_is_the_best_evaluation(learned_run, tmp_path):
    evals = _rows(learned_run, "eval")
    best_eval = max(evals, key=lambda r: r["macro_f1"])  # first of the maxima wins, as in training
    stored = json.loads((learned_run / "checkpoint" / "metrics.json").read_text())
    assert stored["step"] == best_eval["step"] and stored["macro_f1"] == best_eval["macro_f1"]
    assert [r["best"] for r in evals].count(True) >= 1
    # The saved weights really are those of that step: re-scoring them gives the logged metric.
    from deploykit import evaluation
    from deploykit.config import EvalConfig

    out = evaluation.run(EvalConfig(checkpoint=str(learned_run / "checkpoint"), split="validation",
                                    out=str(tmp_path / "eval")))
    assert json.loads((out / "metrics.json").read_text())["macro_f1"] == pytest.approx(stored["macro_f1"], abs=1e-9)


def test_checkpoint_loads_with_plain_transformers(learned_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ckpt = learned_run / "checkpoint"
    assert {"model.safetensors", "config.json", "tokenizer.json", "deploykit.yaml", "metrics.json"} <= set(os.listdir(ckpt))
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    logits = model(**tokenizer(["we love it great", "awful terrible hate"], return_tensors="pt", padding=True)).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == ["positive", "negative"]


def test_early_stopping_stops_after_patience(tmp_path, pretrained_dir, learnable_csv):
    # A learning rate too small to change any prediction: the metric never improves after the first eval.
    out = tmp_path / "run"
    train.run(TrainConfig(data=str(learnable_csv), model=str(pretrained_dir), out=str(out), epochs=10,
                          batch_size=16, lr=1e-12, eval_every=2, patience=2, log_every=1))
    evals = _rows(out, "eval")
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert json.loads((out / "last" / "state.json").read_text())["stopped_early"] is True
    assert json.loads((out / "checkpoint" / "metrics.json").read_text())["step"] == 2


def test_learning_rate_warms_up_linearly_then_decays_linearly_to_zero(tmp_path, pretrained_dir, learnable_csv):
    out = tmp_path / "run"
    train.run(TrainConfig(data=str(learnable_csv), model=str(pretrained_dir), out=str(out), max_steps=12,
                          batch_size=16, lr=1e-3, warmup_ratio=0.25, log_every=1, eval_every=100))
    lrs = [(r["step"], r["lr"]) for r in _rows(out, "train")]
    assert [s for s, _ in lrs] == list(range(1, 13))
    # 3 warm-up steps (0.25 x 12): the rate after step s is s/3 of the peak, then it falls in
    # equal steps to 0 at step 12 (the rate logged is the one the next step will use).
    expected = [1e-3 * (s / 3 if s < 3 else (12 - s) / 9) for s in range(1, 13)]
    assert [lr for _, lr in lrs] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert max(lr for _, lr in lrs) == pytest.approx(1e-3)


def _applied_grad_norms(monkeypatch):
    """Record the global norm of the gradients each optimizer step applies (after clipping)."""
    import torch

    seen = []
    setup = train._setup_optimizer

    def observed(model, cfg):
        optimizer = setup(model, cfg)

        def before_step(opt, args, kwargs):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    monkeypatch.setattr(train, "_setup_optimizer", observed)
    return seen


@pytest.mark.parametrize("max_grad_norm", [0.05, 1e6])
def test_gradient_clipping_bounds_the_applied_gradient(tmp_path, pretrained_dir, learnable_csv, monkeypatch,
                                                       max_grad_norm):
    applied = _applied_grad_norms(monkeypatch)
    out = tmp_path / "run"
    train.run(TrainConfig(data=str(learnable_csv), model=str(pretrained_dir), out=str(out), max_steps=6,
                          batch_size=16, lr=1e-2, warmup_ratio=0.0, log_every=1, eval_every=100,
                          max_grad_norm=max_grad_norm))
    logged = [r["grad_norm"] for r in _rows(out, "train")]
    assert len(logged) == len(applied) == 6
    if max_grad_norm < 1:
        # The logged norm is the one before clipping, above the bound; what the optimizer applied is not.
        assert all(norm > 2 * max_grad_norm for norm in logged)
        assert all(norm == pytest.approx(max_grad_norm, rel=1e-4) for norm in applied)
    else:
        # A bound never reached changes nothing: the applied gradient is the logged one.
        assert applied == pytest.approx(logged, rel=1e-5)


def test_class_weights_auto_follow_inverse_frequency():
    cfg = TrainConfig(class_weights="auto")
    from deploykit.tasks.classification.train import class_weights

    weights = class_weights(cfg, [0] * 6 + [1] * 3 + [2] * 1, 3)
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "deploykit", *args], env=ENV, capture_output=True, text=True, **kw)


def test_config_file_then_flags_and_clear_errors(tmp_path, pretrained_dir, learnable_csv):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: {learnable_csv}\nmodel: {pretrained_dir}\nmax_steps: 3\nbatch_size: 8\n"
                   f"lr: 0.01\n")
    out = tmp_path / "run"
    done = _cli("train", "--config", str(cfg), "--batch-size", "16", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "best checkpoint:" in done.stdout and "macro_f1" in done.stdout
    saved = (out / "checkpoint" / "deploykit.yaml").read_text()
    assert "batch_size: 16" in saved and "max_steps: 3" in saved and f"data: {learnable_csv}" in saved
    # A second run into the same folder needs --resume.
    again = _cli("train", "--config", str(cfg), "--out", str(out))
    assert again.returncode == 2 and "pass --resume" in again.stderr
    # A resume must continue the same run: changed hyper-parameters are refused, naming them.
    other = _cli("train", "--config", str(cfg), "--batch-size", "16", "--out", str(out), "--resume", "--lr", "0.5")
    assert other.returncode == 2 and "--lr 0.01 -> 0.5" in other.stderr
    cfg.write_text("data: x.csv\nlearning_rate: 0.1\n")
    bad = _cli("train", "--config", str(cfg), "--out", str(tmp_path / "r2"))
    assert bad.returncode == 2 and "unknown key(s) learning_rate" in bad.stderr
    bad = _cli("train", "--data", str(tmp_path / "missing.csv"), "--model", str(pretrained_dir),
               "--out", str(tmp_path / "r3"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert not (tmp_path / "r3").exists()  # nothing half-written
    bad = _cli("train", "--model", str(tmp_path), "--data", str(learnable_csv), "--out", str(tmp_path / "r4"))
    assert bad.returncode == 2 and "neither a built-in name" in bad.stderr
    bad = _cli("train", "--lr", "-1", "--out", str(tmp_path / "r5"))
    assert bad.returncode == 2 and "invalid --lr" in bad.stderr


def _train_cmd(data, model, out, *extra):
    return [sys.executable, "-m", "deploykit", "train", "--data", str(data), "--model", str(model),
            "--out", str(out), "--epochs", "8", "--batch-size", "16", "--lr", "0.01", "--eval-every", "7",
            "--save-every", "1", "--log-every", "1", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path, pretrained_dir, learnable_csv):
    reference = tmp_path / "reference"
    done = subprocess.run(_train_cmd(learnable_csv, pretrained_dir, reference), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(learnable_csv, pretrained_dir, killed), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = killed / "metrics.jsonl"
        if log.is_file() and any(json.loads(l)["step"] >= 25 for l in log.read_text().splitlines() if l.endswith("}")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "last" / "state.json").read_text())
    assert 0 < state["step"] < 120

    resumed = subprocess.run(_train_cmd(learnable_csv, pretrained_dir, killed, "--resume"), env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    ref_metrics = json.loads((reference / "checkpoint" / "metrics.json").read_text())
    got_metrics = json.loads((killed / "checkpoint" / "metrics.json").read_text())
    assert got_metrics == ref_metrics
    assert (killed / "last" / "model.safetensors").read_bytes() == (reference / "last" / "model.safetensors").read_bytes()
    ref_evals = [(r["step"], r["macro_f1"], r["loss"]) for r in _rows(reference, "eval")]
    assert [(r["step"], r["macro_f1"], r["loss"]) for r in _rows(killed, "eval")] == ref_evals


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, pretrained_dir, learnable_csv):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
           "-m", "deploykit", "train", "--data", str(learnable_csv), "--model", str(pretrained_dir),
           "--out", str(out), "--max-steps", "6", "--batch-size", "8", "--lr", "0.01", "--eval-every", "3",
           "--log-every", "1"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Only rank 0 writes: one log line per step, one best-checkpoint line on stdout.
    assert [r["step"] for r in _rows(out, "train")] == [1, 2, 3, 4, 5, 6]
    assert done.stdout.count("best checkpoint:") == 1
    rng = json.loads((out / "last" / "rng.json").read_text())
    assert len(rng) == 2 and rng[0] != rng[1]  # each rank's own RNG state, for an exact resume
    # 240 train rows / (2 processes x 8) = 15 steps per epoch: each rank saw its own half.
    assert "15 per epoch" in done.stderr
    assert (out / "checkpoint" / "model.safetensors").is_file()
