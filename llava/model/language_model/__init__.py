"""LLaVA's causal LMs (Llama only: LLaVA-1.5's LLM)."""

from llava.model.language_model.llava_llama import (
    LlavaCausalLMOutputWithPast,
    LlavaConfig,
    LlavaLlamaConfig,
    LlavaLlamaForCausalLM,
    LlavaLlamaModel,
)

__all__ = [
    "LlavaCausalLMOutputWithPast",
    "LlavaConfig",
    "LlavaLlamaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
]
