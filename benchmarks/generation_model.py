"""A random-weight decoder of a realistic size for the generation benchmarks, exported by deploykit.

Speed does not depend on the weights, so the benchmark model is built from a config: by default
the shape of a 135M-parameter Llama-family model (SmolLM-135M: hidden 576, 30 layers, 9 heads
with 3 key/value heads, MLP 1536, vocabulary 49,152, 2,048 positions). Its tokenizer is a byte-
level BPE trained here on the built-in tweets, padded with placeholder tokens up to the model's
vocabulary. The checkpoint's deploykit.yaml names a small prompt/completion file cut from the
same tweets (first half / second half), so ``deploykit export`` checks parity on real text.

Usage (then ``deploykit bench offline OUT/artifact --checkpoint OUT/checkpoint``):
    python3 benchmarks/generation_model.py --out /tmp/gen-bench [--layers 30] [--hidden 576]
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tokenizer(vocab: int, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=min(vocab, 16384),
                                                       special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_tokens([f"<unused{i}>" for i in range(vocab - len(fast))])  # the model's whole vocabulary decodes
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts export checks parity on")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import transformers as T

    from deploykit import checkpoint, export
    from deploykit.bench.inputs import sample_texts
    from deploykit.config import ExportConfig, TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for t in sample_texts("tweets", "text", 20000, 0) if len(t.split()) >= 6]
    pairs = out / "pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "completion"])
        for t in texts[:2000]:
            words = t.split()
            writer.writerow([" ".join(words[:len(words) // 2]), " " + " ".join(words[len(words) // 2:])])
    tok = tokenizer(args.vocab, texts)
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                           num_hidden_layers=args.layers, num_attention_heads=args.heads,
                           num_key_value_heads=args.kv_heads, max_position_embeddings=2048, tie_word_embeddings=True,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    logging.info("random Llama: %.1fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    cfg = TrainConfig(task="text-generation", data=str(pairs), model="random", out=str(out), max_length=256)
    ck = checkpoint.save(model, tok, cfg, {"loss": 0.0}, out / "checkpoint")
    export.run(ExportConfig(checkpoint=str(ck), out=str(out / "artifact"), name="bench-llama", overwrite=True,
                            max_eval_samples=args.prompts, generation_tokens=16,
                            # Random weights give near-uniform logits, whose greedy choices INT8's
                            # rounding flips at will: the gate means nothing for a speed model, so the
                            # INT8 variant is kept servable to be timed (fp32/opt gates stay).
                            int8_min_prompt_agreement=0.0, int8_max_bleu_drop=100.0))
    print(out / "artifact")


if __name__ == "__main__":
    main()
