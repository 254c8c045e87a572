"""Token-reduction baselines behind one flag (``--token_reduction``): one pure module per method, plus the glue.

``spec`` parses the flag into dataclasses (no torch); ``base`` is the one interface (``TowerMethod`` |
``TokenMethod`` | ``LLMMethod``), ``registry`` pairs every flag with its implementation, refuses an unwired one, and
runs the vision-side methods; ``uniform``, ``pool1d``, ``random``, ``visionzip``, ``tome``, ``patch_slimming``,
``prumerge`` hold the algorithms (``slimming_search`` Patch Slimming's calibration search,
``llava.tools.patch_slimming_search`` its command line); ``tower`` implements the vision-side methods on a LLaVA
tower; ``fastv`` maps FastV onto PyramidDrop's one-stage drop; ``apply`` turns a flag into model settings. Nothing
is imported or registered here beyond the flag's parser.
"""

from llava.model.reduction.spec import (
    FLAG,
    METHODS,
    Reduction,
    canonical,
    format_token_reduction,
    parse_token_reduction,
)

__all__ = ["FLAG", "METHODS", "Reduction", "canonical", "format_token_reduction", "parse_token_reduction"]
