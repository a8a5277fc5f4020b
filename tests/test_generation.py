"""text-generation on the one training loop, with tiny random Llama, Qwen2 and GPT-2: the four
strategies and LoRA on decoders, the LoRA merge, --metric bleu, evaluation with BLEU/chrF/exact
match and slices, a learnable task, kill-and-resume, torchrun and bf16."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from deploykit import evaluation, strategies, train
from deploykit.tasks.generation import decoding as generation
from deploykit.config import EvalConfig, TrainConfig
from factories import DECODERS, save_pretrained_lm, tiny_lm

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _train(out, model_dir, data_file, **kw):
    options = dict(task="text-generation", data=str(data_file), model=str(model_dir), out=str(out), batch_size=8,
                   lr=1e-2, warmup_ratio=0.0, max_train_samples=64)
    train.run(TrainConfig(**{**options, **kw}))
    return out


def _rows(run_dir, kind):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == kind]


def _changed(before_dir, run_dir):
    before = load_file(str(before_dir / "model.safetensors"))
    after = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert before.keys() == after.keys()
    return {k for k in before if not before[k].equal(after[k])}


# --- the strategies on decoders ---------------------------------------------------------------

FFN = {"llama": ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "post_attention_layernorm.weight"),
       "qwen2": ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "post_attention_layernorm.weight"),
       "gpt2": ("mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias")}
HEAD = {"llama": {"lm_head.weight"}, "qwen2": {"model.embed_tokens.weight"}, "gpt2": {"transformer.wte.weight"}}
LORA = {"llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj"),
        "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
LORA["qwen2"] = LORA["llama"]


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_parts_are_found_by_structure(arch):
    model = tiny_lm(arch)
    prefix, blocks = strategies.transformer_blocks(model)
    assert len(blocks) == 2
    # The head is lm_head; tied to the input embeddings (Qwen2 and GPT-2 here) it is their tensor.
    assert strategies.head(model) == HEAD[arch]
    assert strategies.tied_head(model) == (None if arch == "llama" else next(iter(HEAD[arch])))
    # FFN: gated MLP (gate, up, down) or GPT-2's Conv1D pair, and the pre-norm that feeds it.
    assert strategies.ffn(model) - HEAD[arch] == {f"{prefix}.{i}.{n}" for i in range(2) for n in FFN[arch]}
    assert strategies.layerwise(model, 0) == HEAD[arch]
    assert strategies.layerwise(model, 1) - HEAD[arch] == {n for n, _ in model.named_parameters()
                                                          if n.startswith(f"{prefix}.1.")}
    assert strategies.layerwise(model, 3) == strategies.full(model)
    assert strategies.lora_targets(model) == [f"{prefix}.{i}.{n}" for i in range(2) for n in LORA[arch]]
    assert strategies.lora_targets(model, "c_attn" if arch == "gpt2" else "q_proj,v_proj") == [
        f"{prefix}.{i}.{n}" for i in range(2) for n in LORA[arch] if n.endswith(("c_attn", "q_proj", "v_proj"))]
    with pytest.raises(ValueError, match="matches no projection"):
        strategies.lora_targets(model, "nope")


@pytest.mark.parametrize("strategy", ["full", "ffn", "head", "layerwise", "lora"])
@pytest.mark.parametrize("arch", DECODERS)
def test_real_steps_change_exactly_the_intended_tensors(tmp_path, decoder_dirs, translation_csv, arch, strategy):
    # Two optimizer steps; layerwise unfreezes the top block after the first.
    run = _train(tmp_path / "run", decoder_dirs[arch], translation_csv, strategy=strategy, max_steps=2,
                 unfreeze_every=1)
    model = tiny_lm(arch)
    expected = {"full": strategies.full, "ffn": strategies.ffn, "head": strategies.head,
                "layerwise": lambda m: strategies.layerwise(m, 1),
                "lora": lambda m: {f"{t}.weight" for t in strategies.lora_targets(m)}}[strategy](model)
    # Every intended tensor moved (LoRA: merged into the targeted weights); every other one is bit-identical.
    assert _changed(decoder_dirs[arch], run) == expected


def test_lora_merges_into_a_plain_model_with_the_adapted_models_logits(tmp_path, decoder_dirs, translation_csv):
    import torch
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = decoder_dirs["llama"]
    run = _train(tmp_path / "run", base, translation_csv, strategy="lora", max_steps=3, eval_every=3)
    ckpt = run / "checkpoint"
    assert json.loads((ckpt / "metrics.json").read_text())["step"] == 3  # last/ holds the same adapters
    # A plain save_pretrained folder: the base model's tensors, no adapter tensors, no peft config.
    assert set(load_file(str(ckpt / "model.safetensors"))) == set(load_file(str(base / "model.safetensors")))
    assert not (ckpt / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    adapted = strategies.add_lora(AutoModelForCausalLM.from_pretrained(base), r=8, alpha=16.0, dropout=0.0)
    load_model(adapted, str(run / "last" / "model.safetensors"))
    adapted.eval()
    assert all(p.abs().sum() > 0 for n, p in adapted.named_parameters() if "lora_B" in n)  # the adapters learned
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    batch = tokenizer(["translate: red cat =", "translate: dog sun moon tree ="], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours, theirs = merged(**batch).logits, adapted(**batch).logits
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


# --- a run with --metric bleu, and its evaluation ----------------------------------------------

@pytest.fixture(scope="module")
def bleu_run(tmp_path_factory, decoder_dirs, translation_csv):
    out = tmp_path_factory.mktemp("gen") / "run"
    return _train(out, decoder_dirs["llama"], translation_csv, max_train_samples=None, max_steps=30, batch_size=16,
                  lr=3e-3, eval_every=10, log_every=1, metric="bleu", max_new_tokens=8)


def test_bleu_picks_the_best_checkpoint_and_the_run_records_its_task(bleu_run):
    evals = _rows(bleu_run, "eval")
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all({"bleu", "chrf", "exact_match", "loss", "perplexity", "n"} <= set(r) for r in evals)
    best = json.loads((bleu_run / "checkpoint" / "metrics.json").read_text())
    top = max(evals, key=lambda r: r["bleu"])
    assert best["step"] == top["step"] and best["bleu"] == top["bleu"] and best["metric"] == "bleu"
    assert best["sacrebleu"]["bleu"].startswith("nrefs:1|")
    stored = (bleu_run / "checkpoint" / "deploykit.yaml").read_text()
    for line in ("task: text-generation", "prompt_column: prompt", "completion_column: completion", "seed: 42",
                 "test_ratio: 0.1"):
        assert line in stored
    assert (bleu_run / "train_curve.png").stat().st_size > 1000


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(bleu_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = bleu_run / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    texts = ["translate: red =", "translate: red cat sun moon =", "translate: dog fish =",
             "translate: tree tree moon =", "translate: blue =", "translate: cat dog sun fish ="]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    batched = generation.generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=6)
    for prompt, got in zip(prompts, batched):
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = alone[0, len(prompt):].tolist()
        assert got == (new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new)


def test_evaluate_reports_bleu_chrf_exact_match_buckets_slices_and_worst_cases(bleu_run, tmp_path):
    import sacrebleu

    done = subprocess.run([sys.executable, "-m", "deploykit", "evaluate", str(bleu_run / "checkpoint"), "--out",
                           str(tmp_path / "eval"), "--slice-column", "source", "--max-new-tokens", "8"],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "BLEU" in done.stdout and "exact match" in done.stdout
    out = tmp_path / "eval"
    assert sorted(os.listdir(out)) == ["errors.jsonl", "length.png", "metrics.json", "report.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 100 and metrics["split"] == "test"
    assert {"bleu", "chrf", "exact_match", "loss", "perplexity", "generated_tokens", "reference_tokens",
            "length_ratio"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"])
    assert sum(b["n"] for b in metrics["by_length"]) == 100
    assert set(metrics["by_slice"]) == {"short", "long"} and sum(s["n"] for s in metrics["by_slice"].values()) == 100
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    # Every miss is listed (100 rows < --max-errors), lowest sentence BLEU first, scored by sacrebleu.
    assert len(errors) == round(100 * (1 - metrics["exact_match"]))
    assert [e["sentence_bleu"] for e in errors] == sorted(e["sentence_bleu"] for e in errors)
    for e in errors[:5]:
        assert e["generated"] != e["reference"]
        assert e["sentence_bleu"] == pytest.approx(sacrebleu.sentence_bleu(e["generated"], [e["reference"]]).score, abs=1e-4)
    report = (out / "report.md").read_text()
    assert f"{metrics['bleu']:.2f}" in report and "sacrebleu signatures" in report and "## By source" in report


def test_a_trained_generation_checkpoint_exports_to_a_servable_artifact(bleu_run, tmp_path):
    """What 'deploykit train --task text-generation' writes, 'deploykit export' takes as is: the
    held-out prompts come from its deploykit.yaml, and the fp32 and fused graphs match PyTorch's
    greedy tokens on every one of them."""
    from deploykit import export
    from deploykit.config import ExportConfig
    from deploykit.manifest import Manifest

    artifact = export.run(ExportConfig(checkpoint=str(bleu_run / "checkpoint"), out=str(tmp_path / "artifact"),
                                       max_eval_samples=40))
    manifest = Manifest.verify(artifact)
    assert manifest.task == "text-generation" and manifest.evaluation.split == "test"
    assert manifest.evaluation.n == 40 and manifest.evaluation.columns["prompt_column"] == "prompt"
    for name in ("fp32", "opt"):
        assert manifest.variants[name].servable and manifest.variants[name].parity["token_agreement"] == 1.0
    int8 = manifest.variants["int8"].parity
    assert int8["passed"] == (int8["token_agreement"] >= 0.95 and int8["bleu_drop"] <= 1.0)


def test_packing_puts_several_rows_in_one_sequence(tmp_path, decoder_dirs, translation_csv):
    run = _train(tmp_path / "run", decoder_dirs["llama"], translation_csv, packing=True, max_length=32, epochs=1,
                 log_every=1)
    steps = [r["step"] for r in _rows(run, "train")]
    # 64 rows of 8-13 tokens, packed 2-3 to a 32-token sequence: fewer than the 8 steps of 64 rows / 8.
    assert 0 < steps[-1] < 8
    assert (run / "checkpoint" / "model.safetensors").is_file()


def test_bf16_generation_run(tmp_path, decoder_dirs, translation_csv):
    run = _train(tmp_path / "run", decoder_dirs["qwen2"], translation_csv, max_steps=2, bf16=True, strategy="lora")
    best = json.loads((run / "checkpoint" / "metrics.json").read_text())
    assert best["step"] == 2 and 0 < best["loss"] < 20


# --- slow: learning, resume, torchrun -------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_llama_learns_a_word_by_word_translation(tmp_path, translation_csv):
    base = save_pretrained_lm(tmp_path / "llama", "llama", hidden=64)

    def scores(checkpoint, name):
        out = evaluation.run(EvalConfig(checkpoint=str(checkpoint), data=str(translation_csv), split="test",
                                        max_new_tokens=8, out=str(tmp_path / name)))
        return json.loads((out / "metrics.json").read_text())

    untrained = scores(base, "before")  # the same held-out split: the run's defaults (seed 42, 80/10/10)
    # Measured: held-out BLEU 0.3 -> 92.2, exact match 0.00 -> 0.94 (the recipe is 600 steps).
    run = _train(tmp_path / "run", base, translation_csv, max_train_samples=None, max_steps=200, batch_size=16,
                 lr=3e-3, eval_every=100)
    trained = scores(run / "checkpoint", "after")
    assert trained["n"] == untrained["n"] == 100
    assert trained["bleu"] >= untrained["bleu"] + 30
    assert trained["exact_match"] >= 0.5 > untrained["exact_match"]


def _train_cmd(data_file, model_dir, out, *extra):
    return [sys.executable, "-m", "deploykit", "train", "--task", "text-generation", "--data", str(data_file),
            "--model", str(model_dir), "--out", str(out), "--strategy", "lora", "--max-train-samples", "240",
            "--epochs", "4", "--batch-size", "8", "--lr", "0.01", "--eval-every", "7", "--save-every", "1",
            "--log-every", "1", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_ends_like_an_uninterrupted_generation_run(tmp_path, decoder_dirs, translation_csv):
    model_dir = decoder_dirs["llama"]
    reference = tmp_path / "reference"
    done = subprocess.run(_train_cmd(translation_csv, model_dir, reference), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(translation_csv, model_dir, killed), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        log = killed / "metrics.jsonl"
        if log.is_file() and any(json.loads(l)["step"] >= 40 for l in log.read_text().splitlines() if l.endswith("}")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < json.loads((killed / "last" / "state.json").read_text())["step"] < 120

    resumed = subprocess.run(_train_cmd(translation_csv, model_dir, killed, "--resume"), env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    for name in ("checkpoint/metrics.json", "checkpoint/model.safetensors", "last/model.safetensors"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert _rows(killed, "eval") == _rows(reference, "eval")


@pytest.mark.slow
def test_torchrun_two_processes_generation(tmp_path, decoder_dirs, translation_csv):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "deploykit", "train",
           "--task", "text-generation", "--data", str(translation_csv), "--model", str(decoder_dirs["gpt2"]),
           "--out", str(out), "--max-steps", "4", "--batch-size", "8", "--lr", "0.01", "--eval-every", "2",
           "--log-every", "1", "--max-train-samples", "64"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in _rows(out, "train")] == [1, 2, 3, 4]
    assert done.stdout.count("best checkpoint:") == 1
    assert len(json.loads((out / "last" / "rng.json").read_text())) == 2
    assert "4 per epoch" in done.stderr  # 64 rows / (2 processes x 8)
