"""The dynamic-pooling language model (Nawrot et al. 2023) that DRIP's image pooling grew from.

``model`` (``PoolingLM``: training, bits per character, analytic MACs) and ``boundaries`` (the character vocabulary
and the supervised boundary targets: entropy spikes, unigram pieces). Nothing is imported here.
"""
