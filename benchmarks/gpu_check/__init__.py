"""One-run GPU check of llava-drip: everything a GPU can tell us, in sections, each surviving the others' failures.

    python -m benchmarks.gpu_check --deadline 420 --json gpu_check.json     # from the repository root; one H200
    python -m benchmarks.gpu_check --device cpu --tiny --compile-backend aot_eager   # the CPU dry run (CI)

Every row is printed and flushed when measured; ``--json`` is rewritten after each section; a section that raises
is recorded (its error and traceback) and the next one runs; ``--deadline SECONDS`` starts no section after that
time. Sections, cheapest and most informative first:

* A ``env``: versions, the GPU, SDPA / TF32 flags, the real ``import flash_attn``, torch's ``varlen_attn``, what
  drip / transformers / LLaVA decide from them; one tiny LLaVA-DRIP training forward in fp16.
* B ``attention``: the attention kernel family each call site gets (profiler op and kernel names: flash-attn,
  varlen_attn, flash, mem-efficient, cuDNN, MATH flagged), time and peak memory: DRIP pre-pool, post-pool padded,
  post-pool packed (two length groups and many), LLM padded, LLM packed block-diagonal, PyramidDrop's stages.
* C ``attention``: varlen numerics in bf16 / fp16 against an fp32 per-image reference: per-image SDPA, padded-mask
  SDPA, ``varlen_attn``, flash-attn when it imports; the same for the LLM's causal attention.
* D ``tower``: DRIP-4x-L-14-336 vs CLIP-L-336 (its pool-free twin): bf16 fwd+bwd at batch 64 and fp16 eval at
  batch 16 (time, peak memory), the time ratio beside the complete-MAC ratio from the timed step's counts, a
  per-phase breakdown of the eval forward, host syncs and kernels per forward.
* E ``tower``: fp16 and bf16 weights vs fp32 on the same images (finite, equal token counts, embedding relative
  difference); one fp16-autocast training step with a GradScaler.
* F ``llava_e2e``: LLaVA-DRIP with random weights on a 4-layer, 4096-wide Llama: packed vs padded training
  fwd+bwd, a text-only batch through the zero-contribution path, PyramidDrop packed vs padded, fp16 generation
  with a packed vs padded prefill (equal greedy tokens, prefill time).
* G ``llm``: the LLM packing rows (1.3B Llama in bf16 built on the GPU: tokens/s, peak memory per layout).
* H ``compiled``: ``tower.compile_blocks()`` speed-up on one batch, then recompiles, graphs and wall time over 3
  batches of other token counts.
"""
