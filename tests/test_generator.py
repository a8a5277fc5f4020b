"""The torch-free generation runtime: greedy tokens equal PyTorch's generate, seeded sampling,
stop strings and EOS, continuous batching (sequences joining and leaving mid-run), the cache
bound, bad settings, chat templates, predict, and no torch import."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import BadInputError
from deploykit.tasks.generation.runtime import Generator, Sampling, _held_back
from factories import DECODERS, lm_tokenizer
from test_runtime import BLOCKER

PROMPTS = ["translate: red cat =", "translate: blue dog sun moon tree =", "the quick brown fox",
           "translate: fish =", "0123456789 jumps over the lazy dog, translate: red blue ="]


def torch_greedy(checkpoint: Path, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """PyTorch generate, one unpadded prompt at a time, stopped at EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=2,
                                 pad_token_id=0)[0, ids.shape[1]:].tolist()
            out.append(new[:new.index(2)] if 2 in new else new)
    return out


@pytest.fixture(scope="module")
def llama(generation_artifacts):
    return Generator(generation_artifacts["llama"][1], "fp32", max_batch_size=8)


@pytest.mark.parametrize("arch", DECODERS)
def test_greedy_equals_pytorch_generate_token_for_token(generation_artifacts, arch):
    checkpoint, artifact = generation_artifacts[arch]
    expected = torch_greedy(checkpoint, PROMPTS, 24)
    for variant in ("fp32", "opt"):
        got = Generator(artifact, variant).generate(PROMPTS, max_new_tokens=24)
        assert [c.token_ids for c in got] == expected, variant
        tokenizer = lm_tokenizer()
        assert [c.text for c in got] == [tokenizer.decode(t, skip_special_tokens=True) for t in expected]
        assert all(c.finish_reason == ("stop" if len(c.token_ids) < 24 else "length") for c in got)


def test_seeded_sampling_is_reproducible_and_independent_of_batch_mates(llama):
    settings = dict(max_new_tokens=16, temperature=1.5, top_k=50, top_p=0.95)
    first = llama.generate(PROMPTS, seed=3, **settings)
    again = llama.generate(PROMPTS, seed=3, **settings)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    other = llama.generate(PROMPTS, seed=4, **settings)
    assert [c.token_ids for c in other] != [c.token_ids for c in first]
    # prompt i samples with seed + i, alone or in a batch
    alone = llama.generate(PROMPTS[2:3], seed=5, **settings)
    assert alone[0].token_ids == first[2].token_ids
    greedy = llama.generate(PROMPTS, max_new_tokens=16)
    assert [c.token_ids for c in first] != [c.token_ids for c in greedy]


def test_top_k_one_is_greedy(llama):
    sampled = llama.generate(PROMPTS, max_new_tokens=12, temperature=1.0, top_k=1, seed=0)
    greedy = llama.generate(PROMPTS, max_new_tokens=12)
    assert [c.token_ids for c in sampled] == [c.token_ids for c in greedy]


def test_continuous_batching_equals_each_sequence_alone(llama):
    """Sequences of different lengths join a running batch and leave it mid-run; each gets exactly
    the tokens it gets alone."""
    lengths = [20, 6, 14, 3, 10]
    alone = [llama.generate([p], max_new_tokens=n, ignore_eos=True)[0].token_ids for p, n in zip(PROMPTS, lengths)]
    scheduler = llama.scheduler()
    ids = [llama.encode(p) for p in PROMPTS]
    seqs = [scheduler.submit(ids[0], Sampling(max_new_tokens=lengths[0], ignore_eos=True))]
    sizes = []
    for step in range(40):
        if step == 2:  # two join while the first runs
            seqs += [scheduler.submit(ids[i], Sampling(max_new_tokens=lengths[i], ignore_eos=True)) for i in (1, 2)]
        if step == 9:  # two more join after one has left
            seqs += [scheduler.submit(ids[i], Sampling(max_new_tokens=lengths[i], ignore_eos=True)) for i in (3, 4)]
        if not scheduler.busy:
            break
        scheduler.step()
        sizes.append(len(scheduler.running))
    assert not scheduler.busy
    assert [s.tokens for s in seqs] == alone
    assert max(sizes) >= 3 and 1 in sizes[3:]  # batches of 3+, and rows left while others ran
    assert scheduler.cache_tokens == 0  # everything freed


def test_the_cache_bound_limits_the_batch(generation_artifacts):
    artifact = generation_artifacts["llama"][1]
    small = Generator(artifact, "fp32", max_cache_tokens=70)
    scheduler = small.scheduler()
    seqs = [scheduler.submit(small.encode(p), Sampling(max_new_tokens=10, ignore_eos=True)) for p in PROMPTS]
    peak = 0
    while scheduler.busy:
        scheduler.step()
        peak = max(peak, scheduler.cache_tokens)
        rows = scheduler.running
        assert not rows or len(rows) * max(s.final_length for s in rows) <= 70
    assert peak <= 70
    big = Generator(artifact, "fp32").generate(PROMPTS, max_new_tokens=10, ignore_eos=True)
    assert [s.tokens for s in seqs] == [c.token_ids for c in big]
    with pytest.raises(BadInputError, match="DEPLOYKIT_MAX_CACHE_TOKENS"):
        small.generate(["translate: " + "red " * 30 + "="], max_new_tokens=40)


def test_stop_strings_end_the_text_and_streaming_deltas_add_up(llama):
    full = llama.generate(PROMPTS[:1], max_new_tokens=24, ignore_eos=True)[0].text
    assert len(full) > 6
    stop = full[3:5]
    cut = llama.generate(PROMPTS[:1], max_new_tokens=24, stop=[stop], ignore_eos=True)[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    scheduler = llama.scheduler()
    seq = scheduler.submit(llama.encode(PROMPTS[0]), Sampling(max_new_tokens=24, stop=(stop,), ignore_eos=True))
    deltas = []
    while scheduler.busy:
        deltas += [e.delta for e in scheduler.step() if e.seq is seq]
    assert "".join(deltas) == cut.text
    assert _held_back("abc<|en", ["<|end|>"]) == 4 and _held_back("abc", ["xyz"]) == 0


def test_eos_ends_a_sequence(generation_artifacts):
    """EOS (unless ignored) ends the completion, is not part of it, and finish_reason says stop."""
    artifact = generation_artifacts["llama"][1]
    gen = Generator(artifact, "fp32")
    first = gen.generate(PROMPTS[:1], max_new_tokens=8, ignore_eos=True)[0].token_ids
    gen.eos = frozenset({first[3]})  # as if that token were the model's EOS
    out = gen.generate(PROMPTS[:1], max_new_tokens=8)[0]
    assert out.token_ids == first[:first.index(first[3])] and out.finish_reason == "stop"


def test_cancelled_sequences_leave_and_free_their_cache(llama):
    scheduler = llama.scheduler()
    a = scheduler.submit(llama.encode(PROMPTS[0]), Sampling(max_new_tokens=30, ignore_eos=True))
    b = scheduler.submit(llama.encode(PROMPTS[1]), Sampling(max_new_tokens=30, ignore_eos=True))
    scheduler.step()
    before = scheduler.cache_tokens
    scheduler.cancel(b)
    events = scheduler.step()
    assert any(e.seq is b and e.finished and e.token is None for e in events)
    assert scheduler.running == [a] and scheduler.cache_tokens < before
    scheduler.run()
    assert a.tokens == llama.generate(PROMPTS[:1], max_new_tokens=30, ignore_eos=True)[0].token_ids


@pytest.mark.parametrize("settings, message", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"), (dict(max_new_tokens=1000), "context")])
def test_bad_settings_are_refused_by_name(llama, settings, message):
    with pytest.raises(BadInputError, match=message):
        llama.generate(PROMPTS[:1], **settings)


def test_chat_messages_render_like_transformers(llama):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "translate: red ="}]
    expected = lm_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert llama.encode(messages) == list(expected)
    with pytest.raises(BadInputError, match="role"):
        llama.encode([{"content": "x"}])


def test_a_classifier_artifact_is_refused(serve_artifact):
    with pytest.raises(BadInputError, match="text-generation artifact"):
        Generator(serve_artifact)


def test_predict_writes_completions(generation_artifacts, tmp_path):
    from deploykit import predict
    from deploykit.config import PredictConfig

    artifact = generation_artifacts["llama"][1]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = predict.run(PredictConfig(artifact=str(artifact), data=str(data), text_column="prompt",
                                    out=str(tmp_path / "out.jsonl"), max_new_tokens=12, chunk_size=2))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = Generator(artifact).generate(PROMPTS, max_new_tokens=12)
    assert [r["row"] for r in rows] == list(range(len(PROMPTS)))
    assert [r["completion"] for r in rows] == [c.text for c in expected]
    assert [r["completion_tokens"] for r in rows] == [c.completion_tokens for c in expected]


def test_generator_never_imports_torch(generation_artifacts):
    artifact = generation_artifacts["qwen2"][1]
    code = BLOCKER + f"""
from deploykit.tasks.generation.runtime import Generator
print(Generator({str(artifact)!r}).generate(['translate: red ='], max_new_tokens=4)[0].completion_tokens)
assert not any(m.split('.')[0] in ('torch', 'transformers', 'datasets') for m in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) in range(0, 5)


def test_choose_samples_within_top_p():
    from deploykit.tasks.generation.runtime import choose

    logits = np.array([5.0, 4.9, 0.0, -1.0])
    rng = np.random.default_rng(0)
    picks = {choose(logits, Sampling(max_new_tokens=1, temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert picks <= {0, 1}
    picks = {choose(logits, Sampling(max_new_tokens=1, temperature=5.0), rng) for _ in range(400)}
    assert picks == {0, 1, 2, 3}


def test_spin_reaches_the_session_and_the_service_setting_picks_it_per_task(generation_artifacts):
    """``spin`` is onnxruntime's allow_spinning; the service's ``auto`` spins for generation
    (decoding steps back to back) and not for classification (it starved the event loop)."""
    from deploykit.config import ServiceConfig

    artifact = generation_artifacts["llama"][1]

    def spinning(generator: Generator) -> str:
        return generator.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(Generator(artifact, "fp32", spin=True)) == "1"
    assert spinning(Generator(artifact, "fp32")) == "0"  # the library default: off
    auto = ServiceConfig()
    assert auto.spin == "auto" and auto.spins(True) and not auto.spins(False)
    assert ServiceConfig(spin="off").spins(True) is False and ServiceConfig(spin="on").spins(False) is True
    with pytest.raises(BadInputError, match="spin"):
        ServiceConfig(spin="sometimes")
