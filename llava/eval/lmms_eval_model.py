"""lmms-eval's ``llava_drip`` model: this project's checkpoints in lmms-eval (Zhang et al., "LMMs-Eval: Reality Check
on the Evaluation of Large Multimodal Models", 2024).

    pip install -e '.[lmms]'
    lmms-eval --model llava_drip --model_args pretrained=CKPT[,model_base=BASE][,conv_mode=vicuna_v1][,dtype=float16]
        [,token_reduction=...][,pdrop_layer_list=[8,16,24],pdrop_image_token_ratio_list=[0.5,0.25,0.125]]
        --tasks scienceqa_img --batch_size 8 --device cuda --output_path runs/lmms

lmms-eval finds the model through the ``lmms_eval.models`` entry point in pyproject.toml (``manifest`` below);
nothing is registered at import. This module subclasses lmms-eval's ``lmms``, so it imports lmms-eval when it is
imported: only lmms-eval (or a test) imports it. Requests are answered by ``llava.eval.generation.AnswerGenerator``,
the code behind ``model_vqa`` / ``model_vqa_science``: the same prompts (``llava.prompting.PromptStyle``; the image
placeholder in front of a question that has an image), length-grouped batches (``plan_batches``), decoding, answer
cut and per-answer costs. What lmms-eval adds:

* ``generate_until``: the task's ``generation_kwargs`` (``max_new_tokens``, ``temperature`` / ``do_sample``,
  ``top_p``, ``num_beams``) replace the decoding defaults (greedy, LLaVA's 1024 new tokens), and each answer is also
  cut before the first of the task's ``until`` strings. One image per document (LLaVA-1.5's layout); none makes a
  text-only question.
* ``loglikelihood``: the sum of the continuation's token log-probabilities after the templated prompt, and whether
  greedy decoding would produce it (``AnswerGenerator.score_continuation``).
* ``generate_until_multi_round``: each round is asked as a new single-turn question, as lmms-eval's own models do.
* Over-long questions (prompt longer than the model's context): ``overlong=skip`` (default) answers them with an
  empty text (scored wrong) and logs their document ids; ``overlong=error`` ends the run with a non-zero exit code
  naming them (a SystemExit, which lmms-eval's CLI does not swallow, so no run ends with exit code 0 and no results).
* Efficiency: every answer returns lmms-eval's ``TokenCounts`` (input = text + visual tokens of the prompt,
  output = the answer's tokens) and logs through lmms-eval's ``log_metrics`` its visual tokens, the tower's and the
  LLM prefill's analytic GMACs (multiply-adds, ``llava.eval.efficiency``); the results JSON's ``throughput`` holds
  their means: ``avg_visual_tokens`` (per image), ``avg_tower_gmacs`` (per image), ``avg_prefill_gmacs`` (per answer).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms

from llava.eval.command import load_model
from llava.eval.generation import AnswerGenerator, Generated, GenerationSettings, plan_batches
from llava.eval.questions import OVERLONG, OverlongQuestion, Question
from llava.model.config import PDropConfig, parse_number_list
from llava.model.reduction.apply import apply_token_reduction
from llava.prompting import cut_at_stop

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ENTRY_POINT = "llava_drip"  # the name lmms-eval's --model takes


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point's payload: where lmms-eval finds ``LlavaDrip``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=ENTRY_POINT, simple_class_path=f"{__name__}.LlavaDrip")


def parse_list(value: Any, kind: type, name: str) -> tuple[Any, ...] | None:
    """A model_args list: ``[8,16,24]`` (brackets keep lmms-eval from splitting at the commas), ``8;16;24`` or a
    single number, quoted or not (``llava.model.config.parse_number_list``); None stays None."""
    if value is None:
        return None
    return parse_number_list(str(value).strip().strip("'\"").replace(";", ","), kind, name)


@dataclass(frozen=True)
class LlavaDripArgs:
    """``--model_args`` of ``llava_drip`` (lmms-eval's ``--batch_size`` and ``--device`` fill the last two)."""

    pretrained: str  # checkpoint directory (full, projector-only or LoRA; llava.model.builder)
    model_base: str | None = None  # base LLM of projector-only / LoRA checkpoints
    conv_mode: str = "vicuna_v1"  # conversation template (llava.conversation.conv_templates)
    token_reduction: str | None = None  # as --token_reduction; None keeps the checkpoint's, "none" turns it off
    pdrop_layer_list: tuple[int, ...] | None = None  # PyramidDrop: drop after these decoder layers ...
    pdrop_image_token_ratio_list: tuple[float, ...] | None = None  # ... keeping these shares of each image's tokens
    pdrop_position_mode: str = PDropConfig.position_mode  # PyramidDrop's position ids after a drop: compact | original
    drip_threshold: float | None = None  # DRIP towers: every pooling stage's eval boundary threshold
    dtype: str | None = None  # float32 | float16 | bfloat16; default fp16 on GPU, fp32 on CPU (the loader's)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    max_new_tokens: int = 1024  # when the task sets none (LLaVA's value)
    overlong: str = "skip"  # a prompt longer than the context: skip (empty answer, logged) | error (exit code 1)
    batch_size: int = 1
    device: str | None = None  # default: cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.overlong not in OVERLONG:
            raise ValueError(f"overlong={self.overlong!r}: expected one of {', '.join(OVERLONG)}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> LlavaDripArgs:
        """From lmms-eval's parsed model_args (numbers already converted, lists still strings)."""
        layers = parse_list(kwargs.pop("pdrop_layer_list", None), int, "pdrop_layer_list")
        ratios = parse_list(kwargs.pop("pdrop_image_token_ratio_list", None), float, "pdrop_image_token_ratio_list")
        batch = kwargs.pop("batch_size", 1)
        kwargs.pop("max_batch_size", None)  # lmms-eval passes it for --batch_size auto, which is not supported
        reduction = kwargs.pop("token_reduction", None)
        return cls(
            pdrop_layer_list=layers,
            pdrop_image_token_ratio_list=ratios,
            batch_size=int(batch),
            token_reduction=None if reduction is None else str(reduction).strip("'\""),
            **kwargs,
        )

    @property
    def pdrop(self) -> PDropConfig | None:
        if self.pdrop_layer_list is None and self.pdrop_image_token_ratio_list is None:
            return None
        if self.pdrop_layer_list is None or self.pdrop_image_token_ratio_list is None:
            raise ValueError("set both pdrop_layer_list and pdrop_image_token_ratio_list")
        return PDropConfig(self.pdrop_layer_list, self.pdrop_image_token_ratio_list, self.pdrop_position_mode)


def load_generator(args: LlavaDripArgs) -> AnswerGenerator:
    """Load the checkpoint as ``model_vqa`` does, apply the args' tower, PyramidDrop and reduction settings."""
    dtype = DTYPES[args.dtype] if args.dtype else None
    tokenizer, model, processor, _ = load_model(
        args.pretrained, args.model_base, args.device, torch_dtype=dtype, attn_implementation=args.attn_implementation
    )
    if args.drip_threshold is not None:
        inner = getattr(model.get_vision_tower(), "vision_tower", None)
        if not hasattr(inner, "set_eval_thresholds"):
            raise ValueError("drip_threshold needs a DRIP vision tower; this checkpoint has another")
        inner.set_eval_thresholds(float(args.drip_threshold))
    apply_token_reduction(model, args.token_reduction)  # first: "none" turns off a FastV the checkpoint recorded
    if args.pdrop is not None:
        model.set_pdrop(args.pdrop)
    settings = GenerationSettings(
        args.conv_mode, temperature=0.0, max_new_tokens=args.max_new_tokens, overlong=args.overlong
    )
    return AnswerGenerator(model, tokenizer, processor, settings, image_folder="")


def task_settings(base: GenerationSettings, gen_kwargs: dict[str, Any]) -> tuple[GenerationSettings, list[str]]:
    """A task's ``generation_kwargs`` -> (decoding settings, ``until`` strings to cut answers at)."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    sample = bool(gen_kwargs.get("do_sample", False))
    temperature = float(gen_kwargs.get("temperature") or 0.0) if sample or "do_sample" not in gen_kwargs else 0.0
    settings = replace(
        base,
        temperature=temperature,
        top_p=gen_kwargs.get("top_p") if temperature > 0 else None,
        num_beams=int(gen_kwargs.get("num_beams") or 1),
        max_new_tokens=int(gen_kwargs.get("max_new_tokens") or base.max_new_tokens),
    )
    return settings, [u for u in until if u]


def cut_at_until(text: str, until: Sequence[str]) -> str:
    """The answer before the first of the ``until`` strings."""
    for stop in until:
        text = cut_at_stop(text, stop)
    return text


def as_question(doc_id: Any, task: str, split: str, context: str, visuals: Sequence[Any] | None) -> Question:
    """A request as the generator's question: ``image_file`` only labels the image (the picture is passed along)."""
    visuals = list(visuals or [])
    if len(visuals) > 1:
        raise ValueError(f"{task}/{split} doc {doc_id}: {len(visuals)} images; llava_drip takes one per question")
    return Question(doc_id, context, f"{task}/{split}/{doc_id}" if visuals else None)


class LlavaDrip(lmms):
    """A llava-drip checkpoint as an lmms-eval model (module docstring); ``**model_args``: ``LlavaDripArgs``."""

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.args = LlavaDripArgs.from_kwargs(**model_args)
        self.generator = load_generator(self.args)
        self._generators: dict[GenerationSettings, AnswerGenerator] = {self.generator.settings: self.generator}

    @property
    def batch_size(self) -> int:
        return self.args.batch_size

    @property
    def device(self) -> torch.device:
        return self.generator.model.device

    def _doc(self, task: str, split: str, doc_id: Any) -> Any:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Any, task: str, split: str, doc_id: Any) -> list[Any]:
        return list(doc_to_visual(self._doc(task, split, doc_id)) or []) if doc_to_visual is not None else []

    def _generator_for(self, settings: GenerationSettings) -> AnswerGenerator:
        if settings not in self._generators:
            g = self.generator
            self._generators[settings] = AnswerGenerator(g.model, g.tokenizer, g.image_processor, settings, "")
        return self._generators[settings]

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answer each request (args: context, gen_kwargs, doc_to_visual, doc_id, task, split) in length-grouped
        batches of ``batch_size`` per distinct ``gen_kwargs``; results in the requests' order."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        out: list[GenerationResult | None] = [None] * len(requests)
        for members in groups.values():
            settings, until = task_settings(self.generator.settings, requests[members[0]].args[1])
            generator = self._generator_for(settings)
            asked = [self._ask(requests[i].args[0], requests[i].args[2:]) for i in members]
            keys = [generator.batch_key(q) for q, _ in asked]
            for batch in plan_batches(keys, self.batch_size):
                results = self._answer(generator, [asked[k] for k in batch], until)
                for k, result in zip(batch, results, strict=True):
                    out[members[k]] = result
        return out  # type: ignore[return-value]

    def _ask(self, context: str, where: Sequence[Any]) -> tuple[Question, list[Any]]:
        doc_to_visual, doc_id, task, split = where
        visuals = self._visuals(doc_to_visual, task, split, doc_id)
        return as_question(doc_id, task, split, context, visuals), visuals

    def _answer(
        self, generator: AnswerGenerator, asked: Sequence[tuple[Question, list[Any]]], until: Sequence[str]
    ) -> list[GenerationResult]:
        t0 = time.perf_counter()
        try:
            answers = generator.generate([q for q, _ in asked], images=[v for _, vs in asked for v in vs])
        except OverlongQuestion as err:  # lmms-eval's CLI logs an exception and exits 0: stop it for real
            raise SystemExit(f"llava_drip: {err}") from None
        seconds = time.perf_counter() - t0
        skipped = [str(q.question_id) for (q, _), a in zip(asked, answers, strict=True) if a.skipped is not None]
        if skipped:
            logger.warning(
                "llava_drip: skipped %d document(s) longer than the model's context (answered empty): %s",
                len(skipped),
                ", ".join(skipped),
            )
        return [self._result(a, cut_at_until(a.text, until), seconds / len(answers)) for a in answers]

    def _result(self, answer: Generated, text: str, seconds: float) -> GenerationResult:
        """lmms-eval's result for one answer; its costs go to lmms-eval's throughput log."""
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        output_tokens = len(self.generator.tokenizer(text, add_special_tokens=False)["input_ids"])
        image = answer.visual_tokens > 0
        log_metrics(
            total_elapsed_time=seconds,
            total_gen_tokens=output_tokens,
            avg_speed=output_tokens / seconds if seconds > 0 else 0.0,
            additional_metrics={
                "total_requests": 1,
                "visual_tokens": answer.visual_tokens if image else None,  # per image: text-only answers skipped
                "tower_gmacs": answer.tower_gflops if image else None,
                "prefill_gmacs": answer.prefill_gflops,
            },
        )
        counts = TokenCounts(input_tokens=answer.text_tokens + answer.visual_tokens, output_tokens=output_tokens)
        return GenerationResult(text=text, token_counts=counts)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, greedy?) of each continuation (args: context, continuation or doc_to_target,
        doc_to_visual, doc_id, task, split), one forward per request."""
        out = []
        for r in requests:
            context, target, doc_to_visual, doc_id, task, split = r.args
            continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            question, visuals = self._ask(context, (doc_to_visual, doc_id, task, split))
            logprob, greedy, _ = self.generator.score_continuation(question, continuation, images=visuals)
            out.append((logprob, greedy))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds (args: context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split): round 0 asks the
        context; later rounds ask what ``doc_to_text(doc, previous_output=, round_idx=, previous_round_info=)``
        returns as ``(visuals, context, terminal, outputs so far, round info)`` until it signals the end."""
        out = []
        for r in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = r.args
            settings, until = task_settings(self.generator.settings, gen_kwargs)
            generator = self._generator_for(settings)
            visuals, outputs, info, round_idx = self._visuals(doc_to_visual, task, split, doc_id), [], None, 0
            while True:
                if round_idx > 0:
                    visuals, context, terminal, outputs, info = doc_to_text(
                        self._doc(task, split, doc_id),
                        previous_output=outputs,
                        round_idx=round_idx,
                        previous_round_info=info,
                    )
                    outputs = list(outputs)
                    if terminal:
                        break
                question = as_question(doc_id, task, split, context, visuals)
                answer = self._answer(generator, [(question, list(visuals or []))], until)[0]
                outputs.append(answer.text)
                round_idx += 1
            out.append(outputs)
        return out
