"""How much accelerator memory one trial needs, estimated from the model's config and the
trial's settings (pure arithmetic: no torch, no weights), part by part:

- weights: the linear layers in NF4 (4 bits plus their block constants: 0.5 byte per
  parameter, +1/16 with plain fp32 constants, +1/64 with double quantization); every other
  parameter (embeddings, lm_head, norms) in fp32, since peft's
  ``prepare_model_for_kbit_training`` casts them up (1 GB of the 4.6 GB of a 4-bit 7B);
- LoRA: r x (in + out) per adapted layer, fp32, with its gradient and the optimizer's
  state (AdamW: 2 x fp32; 8-bit AdamW: 2 bytes);
- activations kept for the backward pass: with gradient checkpointing the fp32 residual
  stream at each layer's input plus one layer's activations while it is recomputed;
  without it every layer's;
- the logits of a batch in fp32 (the loss upcasts them) and their gradient;
- evaluation: the key/value cache of an evaluation batch (generation and label scoring);
- the CUDA context and allocator slack (a constant).

``benchmarks/t4_memory.py`` prints the table for a config and checks it against measured
peaks; `validate` warns when a configuration cannot fit a T4's 15 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GiB = 2**30
T4_USABLE_BYTES = 15 * GiB
"""A Tesla T4's 16 GB as PyTorch can use them (about 15 GiB)."""
CUDA_OVERHEAD_BYTES = int(0.6 * GiB)
"""CUDA context, cuBLAS workspace and the caching allocator's slack."""
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's dimensions (a Llama/Mistral/Qwen-style config)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, hf_config: Any) -> Shape:
        heads = hf_config.num_attention_heads
        return cls(
            vocab=hf_config.vocab_size,
            hidden=hf_config.hidden_size,
            intermediate=hf_config.intermediate_size,
            layers=hf_config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            tied=bool(getattr(hf_config, "tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by module name."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def other_params(self) -> int:
        """Embeddings, lm_head and norms: what stays unquantized."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden * (2 * self.layers + 1)


@dataclass(frozen=True)
class Setting:
    """What a trial's memory depends on besides the model."""

    batch_size: int
    max_length: int
    lora_r: int
    target_modules: tuple[str, ...] = ATTENTION_MODULES
    gradient_checkpointing: bool = True
    optim: str = "paged_adamw_8bit"
    quantization: str = "nf4"
    double_quant: bool = True
    compute_bytes: int = 2
    """2 for fp16/bf16 compute, 4 for fp32."""
    eval_batch_size: int = 16


def estimate(shape: Shape, s: Setting) -> dict[str, int]:
    """Bytes per part (see the module docstring); ``total`` is their sum."""
    parts = {
        "weights": _weights(shape, s),
        "lora + gradients + optimizer": _lora(shape, s),
        "activations": _activations(shape, s),
        "logits": 2 * s.batch_size * s.max_length * shape.vocab * 4,
        "evaluation KV cache": _kv_cache(shape, s),
        "CUDA context + allocator": CUDA_OVERHEAD_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts


def _weights(shape: Shape, s: Setting) -> int:
    if s.quantization == "none":
        return (shape.linear_params + shape.other_params) * s.compute_bytes
    per_param = 0.5 + (1 / 64 if s.double_quant else 4 / 64)
    return int(shape.linear_params * per_param) + shape.other_params * 4


def lora_params(shape: Shape, s: Setting) -> int:
    targets = (
        shape.linear_shapes()
        if "all-linear" in s.target_modules
        else {k: v for k, v in shape.linear_shapes().items() if k in s.target_modules}
    )
    return shape.layers * sum(s.lora_r * (a + b) for a, b in targets.values())


def _lora(shape: Shape, s: Setting) -> int:
    state = 2 if "8bit" in s.optim else 8  # two moments, 8-bit or fp32
    return lora_params(shape, s) * (4 + 4 + state)


def _activations(shape: Shape, s: Setting) -> int:
    tokens = s.batch_size * s.max_length
    h, i, c = shape.hidden, shape.intermediate, s.compute_bytes
    kv = 2 * shape.kv_heads * shape.head_dim
    # One layer's saved tensors: the norms' fp32 inputs and outputs, the attention's
    # inputs and output, the MLP's three intermediate tensors and its input.
    per_layer = tokens * (4 * 4 * h + c * (3 * h + kv) + c * (3 * i + h))
    residual = tokens * h * 4  # the fp32 residual stream at a layer's input
    if s.gradient_checkpointing:
        return shape.layers * residual + per_layer
    return shape.layers * (residual + per_layer)


def _kv_cache(shape: Shape, s: Setting) -> int:
    return shape.layers * 2 * shape.kv_heads * shape.head_dim * s.eval_batch_size * s.max_length * s.compute_bytes


def render(parts: dict[str, int]) -> str:
    width = max(len(k) for k in parts)
    return "\n".join(f"{k:<{width}}  {v / GiB:8.2f} GiB" for k, v in parts.items())
