"""The seed article's four fine-tuning strategies, as pure functions model -> trainable names.

They find the parts of a model by structure, not by BERT's parameter names, so they work for
BERT, RoBERTa, DistilBERT, XLM-R, ELECTRA, DeBERTa and other encoders:

* the *encoder* is the submodule named by the model's ``base_model_prefix``;
* the *blocks* are the longest ``nn.ModuleList`` inside it (the transformer layers);
* a block's *feed-forward sublayer* is its up-projection Linear (d -> h, h > d), its
  down-projection Linear (h -> d) and the first LayerNorm registered after the down-projection;
* the *head* is every parameter outside the encoder, plus the encoder's pooler if it has one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def _encoder(model: nn.Module) -> tuple[str, nn.Module]:
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise ValueError(f"{type(model).__name__} has no base model under base_model_prefix "
                         f"'{prefix}'; deploykit's strategies need a Hugging Face *ForSequenceClassification model")
    return prefix, getattr(model, prefix)


def transformer_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The name prefix and modules of the transformer blocks, bottom to top.

    Raises:
        ValueError: If the model has no list of transformer blocks.
    """
    from torch import nn

    prefix, encoder = _encoder(model)
    lists = [(name, module) for name, module in encoder.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks")
    name, blocks = max(lists, key=lambda item: len(item[1]))
    return f"{prefix}.{name}", list(blocks)


def head_parameters(model: nn.Module) -> set[str]:
    """Parameters of the task head: everything outside the encoder, plus its pooler."""
    prefix, _ = _encoder(model)
    return {name for name, _ in model.named_parameters()
            if not name.startswith(prefix + ".") or name.startswith(f"{prefix}.pooler.")}


def _ffn_parameters(block_prefix: str, block: nn.Module) -> set[str]:
    from torch import nn

    modules = list(block.named_modules())
    linears = [(i, name, m) for i, (name, m) in enumerate(modules) if isinstance(m, nn.Linear)]
    ups = [(i, n, m) for i, n, m in linears if m.out_features > m.in_features]
    if not ups:
        raise ValueError(f"block {block_prefix} has no feed-forward up-projection")
    up_index, up_name, up = ups[0]
    downs = [(i, n, m) for i, n, m in linears
             if i > up_index and m.in_features == up.out_features and m.out_features == up.in_features]
    if not downs:
        raise ValueError(f"block {block_prefix} has no feed-forward down-projection")
    down_index, down_name, _ = downs[0]
    norms = [n for i, (n, m) in enumerate(modules) if i > down_index and isinstance(m, nn.LayerNorm)]
    chosen = [up_name, down_name] + norms[:1]
    names = set()
    for module_name in chosen:
        module = block.get_submodule(module_name)
        names |= {f"{block_prefix}.{module_name}.{p}" for p, _ in module.named_parameters()}
    return names


def full(model: nn.Module) -> set[str]:
    """Full fine-tuning: every parameter."""
    return {name for name, _ in model.named_parameters()}


def head(model: nn.Module) -> set[str]:
    """Discriminative fine-tuning of the task head only; the encoder stays frozen."""
    return head_parameters(model)


def ffn(model: nn.Module) -> set[str]:
    """Featurized fine-tuning: each block's feed-forward sublayer (+ its LayerNorm) and the head."""
    prefix, blocks = transformer_blocks(model)
    names = head_parameters(model)
    for i, block in enumerate(blocks):
        names |= _ffn_parameters(f"{prefix}.{i}", block)
    return names


def layerwise(model: nn.Module, stage: int) -> set[str]:
    """Gradual unfreezing from the top: what is trainable at a given stage.

    Stage 0 trains the head; stage k adds the top k blocks; the stage after the bottom block
    adds everything else (embeddings and any encoder-level weights).
    """
    prefix, blocks = transformer_blocks(model)
    names = head_parameters(model)
    if stage > len(blocks):
        return full(model)
    for i in range(len(blocks) - stage, len(blocks)):
        names |= {n for n, _ in model.named_parameters() if n.startswith(f"{prefix}.{i}.")}
    return names


def layerwise_stages(model: nn.Module) -> int:
    """Number of the last layerwise stage (at which the whole model is trainable)."""
    return len(transformer_blocks(model)[1]) + 1


def trainable_names(model: nn.Module, strategy: str, stage: int = 0) -> set[str]:
    """The parameter names a strategy trains (at a layerwise stage)."""
    if strategy == "layerwise":
        return layerwise(model, stage)
    return {"full": full, "ffn": ffn, "head": head}[strategy](model)


def apply(model: nn.Module, names: set[str]) -> tuple[int, int]:
    """Set ``requires_grad`` so that exactly ``names`` train.

    Returns:
        (trainable parameter count, total parameter count).
    """
    trainable = total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
        total += param.numel()
        trainable += param.numel() if name in names else 0
    return trainable, total


def block_depth(model: nn.Module) -> dict[str, int]:
    """Depth of each parameter from the top, for layer-wise learning-rate decay.

    The head is depth 0, the top block 1, ..., the bottom block L, and embeddings (and any
    other encoder weight) L + 1.
    """
    prefix, blocks = transformer_blocks(model)
    heads = head_parameters(model)
    depth = {}
    for name, _ in model.named_parameters():
        if name in heads:
            depth[name] = 0
        elif name.startswith(prefix + "."):
            index = int(name[len(prefix) + 1:].split(".")[0])
            depth[name] = len(blocks) - index
        else:
            depth[name] = len(blocks) + 1
    return depth
