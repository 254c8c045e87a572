"""Scoring side of the LLaVA-1.5 evaluation: answer files in, metrics out (no torch, no model code).

``llava.eval`` (``python -m llava.eval.model_vqa_science`` / ``model_vqa``) runs a model and writes the answer files;
this package only reads them, so scoring runs anywhere, without the model or a GPU.

Entry points, installed with the project: ``python -m eval.<name>``, or by path as LLaVA's scripts call them
(``python path/to/eval/<name>.py``), from any directory:

* ``convert_sqa_to_llava``  ScienceQA ``problems.json`` -> LLaVA-1.5 test prompts (``llava_test_CQM-A.json``)
* ``eval_science_qa``       ScienceQA answer file -> accuracy, IMG-accuracy, per-category breakdown
* ``eval_gpt_review_bench`` LLaVA-Bench-in-the-Wild: an OpenAI-compatible judge scores reference vs. candidate
* ``rule_score``            the same review format from a deterministic, LLM-free overlap score
* ``summarize_gpt_review``  review files -> relative score per category (LLaVA's summary lines)
* ``results_table``         several runs' metrics + efficiency sidecars -> Markdown table and accuracy-vs-FLOPs plot

Formats follow LLaVA (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) so numbers compare.
"""
