"""The four fine-tuning strategies: what they select, and what real optimizer steps change."""

import pytest
from safetensors.torch import load_file

from deploykit import strategies, train
from deploykit.config import TrainConfig
from factories import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_selection_is_structural_for_every_architecture(arch):
    model = tiny_model(arch)
    names = strategies.full(model)
    prefix, blocks = strategies.transformer_blocks(model)
    assert len(blocks) == 2
    head = strategies.head(model)
    # The head is everything outside the encoder (+ its pooler): the classifier, never the encoder.
    assert head and all("classifier" in n or "pooler" in n for n in head)
    ffn = strategies.ffn(model) - head
    # Two dense layers (weight + bias) and one LayerNorm (weight + bias) per block.
    assert len(ffn) == 2 * 6
    for name in ffn:
        assert name.startswith(prefix + ".")
        assert "attention" not in name and "q_lin" not in name and "sa_layer_norm" not in name
    # layerwise: the head, then one block per stage from the top, then everything.
    assert strategies.layerwise(model, 0) == head
    top = strategies.layerwise(model, 1) - head
    assert top and all(n.startswith(f"{prefix}.1.") for n in top)
    assert strategies.layerwise(model, 3) == names
    assert strategies.layerwise_stages(model) == 3
    trainable, total = strategies.apply(model, head)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in head) and total > trainable


def _changed(pretrained_dir, run_dir):
    before = load_file(str(pretrained_dir / "model.safetensors"))
    after = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert before.keys() == after.keys()
    return {k for k in before if not before[k].equal(after[k])}


def _train(tmp_path, pretrained_dir, learnable_csv, strategy, **kw):
    cfg = TrainConfig(data=str(learnable_csv), model=str(pretrained_dir), out=str(tmp_path / strategy),
                      strategy=strategy, batch_size=16, lr=1e-3, warmup_ratio=0.0, **kw)
    train.run(cfg)
    return tmp_path / strategy


@pytest.mark.parametrize("strategy", ["full", "ffn", "head", "lora"])
def test_real_steps_change_exactly_the_selected_weights(tmp_path, pretrained_dir, learnable_csv, strategy):
    run_dir = _train(tmp_path, pretrained_dir, learnable_csv, strategy, max_steps=2)
    model = tiny_model("bert")
    if strategy == "lora":
        # The adapters, merged into the projections they adapt, and the new head (which must learn).
        selected = {f"{t}.weight" for t in strategies.lora_targets(model)} | strategies.head(model)
    else:
        selected = strategies.trainable_names(model, strategy)
    changed = _changed(pretrained_dir, run_dir)
    # Every selected tensor moved; every other one is bit-identical.
    assert changed == selected


def test_layerwise_unfreezes_one_block_per_interval_from_the_top(tmp_path, pretrained_dir, learnable_csv):
    model = tiny_model("bert")
    head = strategies.head(model)
    top_block = strategies.layerwise(model, 1)
    # Step 1 trains the head; step 2 the head and the top block; step 3 both blocks; never embeddings.
    changed = _changed(pretrained_dir, _train(tmp_path / "a", pretrained_dir, learnable_csv, "layerwise",
                                              max_steps=1, unfreeze_every=1))
    assert changed == head
    changed = _changed(pretrained_dir, _train(tmp_path / "b", pretrained_dir, learnable_csv, "layerwise",
                                              max_steps=2, unfreeze_every=1))
    assert changed == top_block
    changed = _changed(pretrained_dir, _train(tmp_path / "c", pretrained_dir, learnable_csv, "layerwise",
                                              max_steps=3, unfreeze_every=1))
    assert changed == strategies.layerwise(model, 2)
    assert not any("embeddings" in n for n in changed)


def test_layer_lr_decay_gives_lower_blocks_smaller_rates(pretrained_dir):
    model = tiny_model("bert")
    cfg = TrainConfig(model=str(pretrained_dir), lr=1e-3, layer_lr_decay=0.5)
    optimizer = train._setup_optimizer(model, cfg)
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[next(n for n, q in model.named_parameters() if q is p)] = (group["lr"], group["weight_decay"])
    assert rates["classifier.weight"] == (1e-3, 0.01)
    assert rates["bert.encoder.layer.1.output.dense.weight"] == (1e-3, 0.01)
    assert rates["bert.encoder.layer.0.output.dense.weight"] == (5e-4, 0.01)
    assert rates["bert.embeddings.word_embeddings.weight"] == (2.5e-4, 0.01)
    # No weight decay on biases and LayerNorm.
    assert rates["bert.encoder.layer.0.output.dense.bias"] == (5e-4, 0.0)
    assert rates["bert.encoder.layer.0.output.LayerNorm.weight"] == (5e-4, 0.0)
