"""Answer generation for LLaVA's benchmarks: this package runs a model and writes answer files; the top-level
``eval`` package scores them (it needs no torch and never loads a model).

``model_vqa`` (open-ended, LLaVA-Bench) and ``model_vqa_science`` (ScienceQA) keep LLaVA-1.5's module paths and
flags (``command``); they share prompts, batching and resume (``generation``), the answers file's identity and lock
(``answers``) and the efficiency sidecar (``efficiency``)."""
