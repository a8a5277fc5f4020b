"""Write the generated NER corpus the token-classification benchmarks use (deploykit.tasks.token_classification.corpus).

    python benchmarks/ner_corpus.py --out benchmarks/data/ner

writes ``train.jsonl`` (entities from the training name pools, planted into real tweets; deploykit
splits it 80/10/10) and ``test.jsonl`` (a separate file whose persons, organisations and places are
never in the training pools): span-level rows ``{"text", "entities": [{"start", "end", "label"}],
"template", "source"}``. The same seeds give the same files on any machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deploykit.tasks.token_classification import corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/data/ner", help="Folder for train.jsonl and test.jsonl.")
    parser.add_argument("--train-rows", type=int, default=5000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sentences = corpus.tweets()
    corpus.write_jsonl(corpus.generate(args.train_rows, args.seed, "train", sentences), out / "train.jsonl")
    corpus.write_jsonl(corpus.generate(args.test_rows, args.seed + 1, "test", sentences), out / "test.jsonl")
    info = {"train_rows": args.train_rows, "test_rows": args.test_rows, "seed": args.seed,
            "real_sentences": len(sentences), "pools": {"train": corpus.pool_sizes("train"),
                                                        "test": corpus.pool_sizes("test")}}
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
