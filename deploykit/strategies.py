"""The seed article's four fine-tuning strategies, as pure functions model -> trainable names,
and LoRA adapters (``peft``) as a fifth.

They find the parts of a model by structure, not by parameter names, so they work for encoders
(BERT, RoBERTa, DistilBERT, XLM-R, ELECTRA, DeBERTa) and decoder-only language models (Llama,
Qwen2, GPT-2) alike:

* the *encoder* (the base model) is the submodule named by the model's ``base_model_prefix``;
* the *blocks* are the longest ``nn.ModuleList`` inside it (the transformer layers);
* a *projection* is a ``Linear`` or transformers' ``Conv1D`` (GPT-2's, weight stored [in, out]);
* a block's *feed-forward sublayer* is its down-projection (the projection h -> d with the
  widest input, h > d), every up-projection d -> h feeding it (one for BERT's and GPT-2's MLP,
  gate and up for Llama's gated MLP), and its norm (LayerNorm or RMSNorm): in a post-norm block
  (BERT) the first norm a forward pass runs after the down-projection, in a pre-norm block
  (Llama, GPT-2) the last one it runs before the first up-projection. The order is the one a
  real forward pass runs (forward hooks), not the registration order, which differs in Llama;
* the *head* is every parameter outside the encoder, plus the encoder's pooler if it has one,
  plus the output embedding (a language model's ``lm_head``). When ``lm_head`` is tied to the
  input embeddings it is one tensor, listed under the embeddings' name: training the head then
  trains the embeddings too (``tied_head`` says so).
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


def _output_embedding_names(model: nn.Module) -> set[str]:
    """The parameter name(s) under which the output embedding's weight is listed (if any)."""
    get = getattr(model, "get_output_embeddings", None)
    output = get() if get else None
    if output is None or getattr(output, "weight", None) is None:
        return set()
    return {name for name, param in model.named_parameters() if param is output.weight}


def head_parameters(model: nn.Module) -> set[str]:
    """Parameters of the task head: everything outside the encoder, its pooler, and the output
    embedding (``lm_head``, listed under the input embeddings' name when tied to them)."""
    prefix, _ = _encoder(model)
    return {name for name, _ in model.named_parameters()
            if not name.startswith(prefix + ".") or name.startswith(f"{prefix}.pooler.")} \
        | _output_embedding_names(model)


def tied_head(model: nn.Module) -> str | None:
    """The input-embedding parameter that ``lm_head`` shares (tie_word_embeddings), or None."""
    prefix, _ = _encoder(model)
    tied = [n for n in _output_embedding_names(model) if n.startswith(prefix + ".")]
    return tied[0] if tied else None


def projection_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a Linear or transformers' Conv1D; None for any other module."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return None


def _is_norm(module: nn.Module) -> bool:
    from torch import nn

    # LayerNorm, or a model's own RMSNorm/LayerNorm class (LlamaRMSNorm, T5LayerNorm, ...).
    return isinstance(module, nn.LayerNorm) or (type(module).__name__.lower().endswith("norm")
                                               and not list(module.children()))


def _execution_order(model: nn.Module, blocks: list[nn.Module]) -> list[list[str]]:
    """Each block's projections and norms in the order a forward pass runs them (first call)."""
    import torch

    order: list[list[str]] = [[] for _ in blocks]

    def record(i: int, name: str):
        def hook(module, args, output) -> None:
            if name not in order[i]:
                order[i].append(name)
        return hook

    hooks = [module.register_forward_hook(record(i, name))
             for i, block in enumerate(blocks) for name, module in block.named_modules()
             if projection_shape(module) or _is_norm(module)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the pass draws no random numbers, so seeded runs stay the same
    try:
        with torch.no_grad():
            ids = torch.zeros((1, 2), dtype=torch.long, device=device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return order


def _ffn_parameters(block_prefix: str, block: nn.Module, order: list[str]) -> set[str]:
    shapes = {name: projection_shape(m) for name, m in block.named_modules() if projection_shape(m)}
    downs = [name for name, (n_in, n_out) in shapes.items() if n_in > n_out]
    if not downs:
        raise ValueError(f"block {block_prefix} has no feed-forward down-projection (h -> d, h > d)")
    down = max(downs, key=lambda name: shapes[name][0])  # the first of the widest
    ups = [name for name, shape in shapes.items() if shape == shapes[down][::-1]]
    if not ups:
        raise ValueError(f"block {block_prefix} has no feed-forward up-projection {shapes[down][::-1]}")
    norms = {name for name, m in block.named_modules() if _is_norm(m)}
    ran = [name for name in order if name in norms or name in shapes]
    if not set(ups + [down]) <= set(ran):
        raise ValueError(f"block {block_prefix}: a forward pass did not run its feed-forward projections "
                         f"{ups + [down]} (a mixture of experts?)")
    after = [name for name in ran[ran.index(down) + 1:] if name in norms]
    first_up = min(ran.index(up) for up in ups)
    before = [name for name in ran[:first_up] if name in norms]
    # Post-norm (BERT): a norm follows the down-projection. Pre-norm (Llama, GPT-2): the norm
    # that feeds the first up-projection.
    chosen = ups + [down] + (after[:1] if after else before[-1:])
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
    for i, (block, order) in enumerate(zip(blocks, _execution_order(model, blocks))):
        names |= _ffn_parameters(f"{prefix}.{i}", block, order)
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
    """The parameter names a strategy trains (at a layerwise stage); lora is ``add_lora``'s."""
    if strategy == "layerwise":
        return layerwise(model, stage)
    return {"full": full, "ffn": ffn, "head": head}[strategy](model)


def lora_targets(model: nn.Module, spec: str = "auto") -> list[str]:
    """Module names of the projections that get LoRA adapters.

    Args:
        model: The model (not yet wrapped by peft).
        spec: ``auto`` (every projection inside the transformer blocks) or comma-separated
            module names (the last part of the name, e.g. ``q_proj,v_proj`` or ``c_attn``).

    Raises:
        ValueError: A listed name matches no projection in the blocks (the message lists them).
    """
    prefix, blocks = transformer_blocks(model)
    names = [f"{prefix}.{i}.{name}" for i, block in enumerate(blocks)
             for name, module in block.named_modules() if projection_shape(module)]
    if spec.strip() == "auto":
        return names
    wanted = {part.strip() for part in spec.split(",") if part.strip()}
    found = {name.rsplit(".", 1)[-1] for name in names}
    if wanted - found:
        raise ValueError(f"--lora-target {','.join(sorted(wanted - found))} matches no projection in "
                         f"the transformer blocks; they have {','.join(sorted(found))}")
    return [name for name in names if name.rsplit(".", 1)[-1] in wanted]


def add_lora(model: nn.Module, *, r: int, alpha: float, dropout: float, target: str = "auto",
             train_head: bool = False) -> nn.Module:
    """Wrap a model with LoRA adapters (peft); only the adapters (and the head) train.

    Args:
        model: The model to adapt.
        r: Rank of each adapter.
        alpha: Scaling numerator (updates are scaled by alpha / r).
        dropout: Dropout on the adapters' input.
        target: ``lora_targets``'s spec.
        train_head: Also train the head (a classifier's new head must learn; a language
            model's ``lm_head`` is pretrained and stays frozen).

    Returns:
        The peft model.
    """
    from peft import LoraConfig, get_peft_model

    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(model, target)
    heads = sorted({name.rsplit(".", 1)[0] for name in head_parameters(model)}) if train_head else None
    # Conv1D stores its weight transposed ([in, out]); peft must know to merge it the right way round.
    transposed = all(isinstance(model.get_submodule(name), Conv1D) for name in targets)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=heads, bias="none", fan_in_fan_out=transposed)
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """A plain transformers model with the LoRA adapters merged into its weights.

    Merges a copy, so the model that keeps training keeps its separate adapters (merging in
    place and unmerging would round the base weights differently each time).
    """
    import copy

    return copy.deepcopy(model).merge_and_unload()


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
