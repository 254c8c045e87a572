"""Answer generation for LLaVA's benchmarks: ``model_vqa`` (open-ended, LLaVA-Bench) and ``model_vqa_science``
(ScienceQA) share prompts, batching and resume (``generation``) and the efficiency sidecar (``efficiency``).
Scoring lives in the top-level ``eval`` package."""
