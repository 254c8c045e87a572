"""Token-reduction baselines behind one flag (``--token_reduction``): one pure module per method, plus the glue.

``spec`` parses the flag; ``uniform``, ``random``, ``visionzip``, ``tome``, ``patch_slimming`` hold the algorithms
(``slimming_search`` Patch Slimming's calibration search, ``llava.tools.patch_slimming_search`` its CLI); ``tower`` runs
the vision-side methods on a LLaVA tower; ``fastv`` maps FastV onto PyramidDrop's one-stage drop; ``apply`` turns a
flag into model settings. Nothing is imported or registered here beyond the flag's parser.
"""

from llava.model.reduction.spec import FLAG, Method, canonical, format_token_reduction, parse_token_reduction

__all__ = ["FLAG", "Method", "canonical", "format_token_reduction", "parse_token_reduction"]
