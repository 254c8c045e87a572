"""Answer generation shared by ``model_vqa`` and ``model_vqa_science``: prompts, batching, resume, efficiency sidecar.

The entry points keep LLaVA-1.5's interfaces (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023):
the same flags, the same question files, and answer lines ``{question_id, prompt, text, answer_id, model_id,
metadata}`` whose ``prompt`` is LLaVA's ``cur_prompt`` (the question text, with ``<image>\\n`` in front exactly when the
question has an image; ScienceQA's IMG-accuracy is computed from that). What is ours:

* Batching. Questions are cut into fixed windows of a few batches in their original order; inside a window they are
  grouped by prompt length (image questions apart from text-only ones) and left-padded. The windows never depend on
  where an earlier run stopped, so every question meets the same batch. With DRIP each image yields its own number
  of visual tokens; the splice pads the batch again after inserting them. In fp32 greedy answers do not depend on
  the batch size (tested on CPU); in fp16 on a GPU, padding changes the kernels' rounding, so rare near-ties may
  decode differently.
* Resume. Lines are written in question order, one ``write`` + ``flush`` each, as soon as every earlier question of
  the window is answered. A rerun keeps the complete lines already in the file, drops a trailing partial line (a
  kill mid-write), and answers only the questions left (a batch that still misses an answer is generated whole), so
  it ends with the file an uninterrupted run writes, batched or not. ``answer_id`` is a hash of (model, question,
  answer) instead of LLaVA's random ``shortuuid``, so reruns agree. The file must have been written by the same
  model and settings, and one run at a time writes it (``llava.eval.answers``: identity sidecar and lock).
* Over-long questions (prompt longer than the model's context): the batch is answered without them and their lines
  have an empty ``text`` (scored wrong) and ``metadata`` ``{"skipped": "overlong", "prompt_tokens", "context"}``;
  the sidecar counts them and a rerun resumes past them. ``overlong="error"`` stops the run naming their ids.
* Efficiency. Each answer's ``metadata`` records its visual and text token counts and analytic costs; the sidecar
  ``<answers>.efficiency.json`` aggregates them over the whole file (resumed parts included) and adds the
  seconds per answer and peak memory (``llava.eval.efficiency``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval.answers import (
    answer_id,
    answers_lock,
    check_answers_path,
    claim_answers_file,
    content_sha1,
    images_sha1,
    prompts_sha1,
    resume_answers,
)
from llava.eval.efficiency import RunClock, VisionProbe, efficiency_path, reset_peak_memory, write_sidecar
from llava.eval.questions import OVERLONG, OverlongQuestion, Question
from llava.mm_utils import load_image, process_images, tokenizer_image_token
from llava.model.config import MultimodalConfig
from llava.model.flops import prefill_macs
from llava.model.packed_prefill import prefill_padding
from llava.model.reduction.spec import PatchSlimming
from llava.model.splice import PromptTooLong
from llava.prompting import Decoding, PromptStyle, cut_at_stop, pad_token_id

WINDOW_BATCHES = 4  # batches grouped by length at a time: bigger groups pad less, a kill loses more unwritten work


# --- answers file ------------------------------------------------------------------------------------------------
def answer_record(question: Question, text: str, model_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """One answer line, keys in LLaVA's order."""
    return {
        "question_id": question.question_id,
        "prompt": question.text if question.prompt is None else question.prompt,
        "text": text,
        "answer_id": answer_id(model_id, question.question_id, text),
        "model_id": model_id,
        "metadata": metadata,
    }


# --- generation --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSettings:
    conv_mode: str = "vicuna_v1"  # conversation template (llava.conversation.conv_templates)
    temperature: float = 0.2  # 0: greedy
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 1024  # LLaVA's fixed value
    overlong: str = "skip"  # a prompt longer than the context: skip (an empty, marked answer) | error

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {', '.join(OVERLONG)}, got {self.overlong!r}")

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.temperature, self.top_p, self.num_beams, self.max_new_tokens)


@dataclass
class Generated:
    """One answer and what it cost (the answer line's metadata)."""

    text: str
    visual_tokens: int  # visual tokens the LLM received (0 for a text-only question)
    text_tokens: int  # prompt tokens besides the visual ones
    tower_gflops: float | None  # analytic GMACs of the vision path on this question's image (None: no image)
    prefill_gflops: float  # analytic GMACs of the LLM prefill
    skipped: int | None = None  # the context length, when the prompt did not fit it (not answered; text is "")

    def metadata(self) -> dict[str, Any]:
        if self.skipped is not None:  # no costs: nothing ran (the efficiency summary leaves the line out)
            return {
                "skipped": "overlong",
                "prompt_tokens": self.visual_tokens + self.text_tokens,
                "context": self.skipped,
            }
        return {
            "visual_tokens": self.visual_tokens,
            "text_tokens": self.text_tokens,
            "tower_gflops": None if self.tower_gflops is None else round(self.tower_gflops, 6),
            "prefill_gflops": round(self.prefill_gflops, 6),
        }


class AnswerGenerator:
    """Prompts, images and batched ``generate`` for one loaded model.

    Args:
        model: a ``LlavaLlamaForCausalLM`` (its ``generate`` takes ``images`` and returns only the new tokens).
        tokenizer, image_processor: as ``load_pretrained_model`` returns them.
        settings: template and decoding options.
        image_folder: where the questions' image files are.
    """

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, settings: GenerationSettings, image_folder: str
    ) -> None:
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.settings, self.image_folder = settings, image_folder
        self.style = PromptStyle(settings.conv_mode, MultimodalConfig.from_config(model.config).use_im_start_end)
        self.stop_str = self.style.stop_string(tokenizer)  # '' when EOS ends an answer by itself
        self.pad_id = pad_token_id(tokenizer)
        self._ids: dict[str, Tensor] = {}

    def prompt_ids(self, question: Question) -> Tensor:
        """The templated prompt's ids [L] (``IMAGE_TOKEN_INDEX`` for the image), cached per query."""
        query = question.query(self.style.use_im_start_end)
        if query not in self._ids:
            self._ids[query] = self.style.prompt_ids([query], self.tokenizer)
        return self._ids[query]

    def batch_key(self, question: Question) -> tuple[bool, int]:
        """Grouping key: image questions apart (their visual tokens dominate the length), then prompt length."""
        return question.image_file is not None, int(self.prompt_ids(question).shape[0])

    def generate(self, batch: Sequence[Question], images: Sequence[Image.Image] | None = None) -> list[Generated]:
        """Answer ``batch`` in one left-padded ``generate`` call; results in the batch's order.

        ``images``: the pictures of the batch's image questions, in batch order, when the caller holds them in memory
        (lmms-eval's documents); None reads each ``image_file`` from the image folder. A question longer than the
        context is skipped or raises ``OverlongQuestion`` (``settings.overlong``).
        """
        try:
            return self._generate(batch, images)
        except PromptTooLong as err:
            return self._without_overlong(batch, images, err)

    def _without_overlong(
        self, batch: Sequence[Question], images: Sequence[Image.Image] | None, err: PromptTooLong
    ) -> list[Generated]:
        """The batch answered without the questions ``err`` names (each gets a skipped ``Generated``)."""
        long = dict(err.samples)  # batch position -> spliced prompt length
        if self.settings.overlong == "error":
            raise OverlongQuestion.naming([(batch[i].question_id, n) for i, n in err.samples], err.context) from None
        keep = [i for i in range(len(batch)) if i not in long]
        pictures = None
        if images is not None:  # the pictures of the kept image questions, in batch order
            shown = [i for i, q in enumerate(batch) if q.image_file is not None]
            pictures = [img for i, img in zip(shown, images, strict=True) if i not in long]
        answered = iter(self._generate([batch[i] for i in keep], pictures) if keep else [])
        out = []
        for i, q in enumerate(batch):
            if i in long:
                text_tokens = int((self.prompt_ids(q) != IMAGE_TOKEN_INDEX).sum())
                out.append(Generated("", long[i] - text_tokens, text_tokens, None, 0.0, skipped=err.context))
            else:
                out.append(next(answered))
        return out

    def _generate(self, batch: Sequence[Question], images: Sequence[Image.Image] | None) -> list[Generated]:
        ids = [self.prompt_ids(q) for q in batch]
        width = max(x.shape[0] for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)  # [B, L], left-padded
        attention_mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for i, x in enumerate(ids):
            input_ids[i, width - x.shape[0] :] = x
            attention_mask[i, width - x.shape[0] :] = True
        pixels, sizes = self.question_pixels(batch, images)
        device = self.model.device
        with VisionProbe(self.model) as probe, torch.inference_mode():
            output_ids = self.model.generate(
                input_ids.to(device),
                attention_mask=attention_mask.to(device),
                images=pixels,
                image_sizes=sizes,
                **self.settings.decoding.generate_kwargs(self.tokenizer, self.stop_str),
            )
        decoded = self.tokenizer.batch_decode(output_ids, skip_special_tokens=True)
        texts = [cut_at_stop(t, self.stop_str) for t in decoded]
        return self.with_costs(batch, ids, texts, probe)

    @property
    def prefill_layout(self) -> str:
        """ "packed" when the model's batched prefill runs padding-free (``llava.model.packed_prefill``), else
        "padded" (left-padded prompts)."""
        return "packed" if self.model.prefill_packs() else "padded"

    def prefill_positions(self, answers: Sequence[Generated]) -> tuple[int, int]:
        """(real, padding) positions the LLM prefill of one batch computed: every beam's copy of the spliced prompts,
        and the padding between them (the pack's filler with a packed prefill, else the left padding)."""
        ran = [a for a in answers if a.skipped is None]
        lengths = [a.text_tokens + a.visual_tokens for a in ran for _ in range(self.settings.num_beams)]
        packed = self.prefill_layout == "packed"
        return sum(lengths), prefill_padding(self.model.config, lengths, packed, self.model.runtime.packing_single_row)

    @torch.inference_mode()
    def score_continuation(
        self, question: Question, continuation: str, images: Sequence[Image.Image] | None = None
    ) -> tuple[float, bool, Generated]:
        """How likely the model finds ``continuation`` as the reply to ``question`` (one forward, batch of one).

        The continuation is tokenised on its own, without BOS, as training tokenises a reply. Returns (sum of its
        tokens' log-probabilities, whether greedy decoding would produce exactly these tokens, the prompt's costs
        with ``continuation`` as its text). ``images`` as in ``generate``.
        """
        context = self.prompt_ids(question)  # [L]
        target = torch.tensor(tokenizer_image_token(continuation, self.tokenizer, add_special_tokens=False))  # [C]
        if target.numel() == 0:
            raise ValueError(f"question {question.question_id}: the continuation {continuation!r} has no tokens")
        pixels, sizes = self.question_pixels([question], images)
        device = self.model.device
        with VisionProbe(self.model) as probe:
            ids = torch.cat([context, target])[None].to(device)  # [1, L + C]
            logits = self.model(input_ids=ids, images=pixels, image_sizes=sizes).logits[0]  # [T, V], T spliced
        logp = logits[-target.numel() - 1 : -1].float().log_softmax(-1)  # [C, V]: the positions predicting target
        target = target.to(logp.device)
        total = float(logp.gather(1, target[:, None]).sum())
        greedy = bool((logp.argmax(-1) == target).all())
        return total, greedy, self.with_costs([question], [context], [continuation], probe)[0]

    def question_pixels(
        self, batch: Sequence[Question], images: Sequence[Image.Image] | None
    ) -> tuple[list[Tensor] | None, list[tuple[int, int]] | None]:
        """Processed pixels and sizes of ``batch``'s image questions: ``images`` when the caller holds them (in batch
        order), else each ``image_file`` read from the image folder."""
        if images is None:
            images = self.load_images([q.image_file for q in batch if q.image_file is not None])
        return self.pixels(images)

    def load_pixels(self, files: list[str]) -> tuple[list[Tensor] | None, list[tuple[int, int]] | None]:
        """Images (paths relative to the image folder) -> processed pixels [3, H, W] each and (width, height)."""
        return self.pixels(self.load_images(files))

    def load_images(self, files: Sequence[str]) -> list[Image.Image]:
        """Image files (paths relative to the image folder) -> RGB pictures."""
        return [load_image(os.path.join(self.image_folder, f)) for f in files]

    def pixels(self, pil: Sequence[Image.Image]) -> tuple[list[Tensor] | None, list[tuple[int, int]] | None]:
        """Pictures -> the tower's processed pixels [3, H, W] each and their (width, height); (None, None) for none."""
        if not pil:
            return None, None
        pixels = [process_images([img], self.image_processor, self.model.config)[0] for img in pil]  # [3, H, W] each
        return pixels, [img.size for img in pil]

    def with_costs(
        self, batch: Sequence[Question], ids: list[Tensor], texts: list[str], probe: VisionProbe
    ) -> list[Generated]:
        visual, tower = iter(probe.token_counts), iter(probe.gflops)
        out = []
        for q, x, text in zip(batch, ids, texts, strict=True):
            text_tokens = int((x != IMAGE_TOKEN_INDEX).sum())
            n = next(visual) if q.image_file is not None else 0
            g = next(tower) if q.image_file is not None else None
            prefill = prefill_macs(self.model.config, text_tokens, n) / 1e9
            out.append(Generated(text, n, text_tokens, g, prefill))
        return out


def plan_batches(keys: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of ``batch_size`` after sorting by ``keys`` (stable, so ties keep their order)."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --- the run -------------------------------------------------------------------------------------------------------
def run_identity(
    questions: Sequence[Question], generator: AnswerGenerator, model_id: str, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What an answers file records about the run that writes it (``llava.eval.answers``): the model (``source``:
    path, base, fingerprint, seed; default the model's ``name_or_path``), template, exact prompts, the images'
    contents, decoding, and the token reduction (with the contents of the files it names) and PyramidDrop schedule
    the model runs with (answer-time flags can replace the checkpoint's)."""
    use = generator.style.use_im_start_end
    prompts = [(q.question_id, q.query(use), q.image_file, q.prompt) for q in questions]
    mm = generator.model.mm_config
    schedules = [m.schedule for m in mm.reductions if isinstance(m, PatchSlimming)]
    return {
        "images_sha1": images_sha1(generator.image_folder, [q.image_file for q in questions]),
        "token_reduction_files": {path: content_sha1(path) for path in schedules},
        "model_id": model_id,
        **(source if source is not None else {"model_path": getattr(generator.model, "name_or_path", None)}),
        "conv_mode": generator.settings.conv_mode,
        "use_im_start_end": use,
        "questions": len(questions),
        "prompts_sha1": prompts_sha1(prompts),
        "decoding": asdict(generator.settings.decoding),
        "token_reduction": mm.token_reduction,
        "pdrop": None if mm.pdrop is None else asdict(mm.pdrop),
    }


def generate_answers(
    questions: Sequence[Question],
    generator: AnswerGenerator,
    answers_file: str,
    model_id: str,
    batch_size: int = 1,
    overwrite: bool = False,
    efficiency_file: str | None = None,
    progress: bool = True,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer every question not yet in ``answers_file`` and write the efficiency sidecar; returns the sidecar dict.

    Lines go out in question order (see the module docstring for resume). The questions are cut into fixed windows
    of ``batch_size * WINDOW_BATCHES`` in their original order, and each window into ``batch_size`` batches grouped
    by ``generator.batch_key``; a batch with any answer missing is generated whole, so every question is answered in
    the same batch however often the run was stopped. The file is locked while it is written and must have been
    written by the same run (``run_identity`` with ``source``) unless ``overwrite``. The sidecar goes to
    ``efficiency_file`` (default ``<answers_file>.efficiency.json``) and is rewritten after every window.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    check_answers_path(answers_file)
    with answers_lock(answers_file):
        claim_answers_file(answers_file, run_identity(questions, generator, model_id, source), overwrite)
        done = resume_answers(answers_file, [q.question_id for q in questions], overwrite)
        sidecar = efficiency_file or efficiency_path(answers_file)
        clock = RunClock.from_sidecar(sidecar) if done else RunClock()  # a resumed file keeps its earlier timing
        extra = {
            "model_id": model_id,
            "batch_size": batch_size,
            "conv_mode": generator.settings.conv_mode,
            "prefill_layout": generator.prefill_layout,
        }
        reset_peak_memory(generator.model.device)
        window = batch_size * WINDOW_BATCHES
        bar = tqdm(total=len(questions), initial=len(done), disable=not progress, desc="answers")
        with open(answers_file, "a", encoding="utf-8") as f, bar:
            for start in range(0, len(questions), window):
                part = questions[start : start + window]
                missing = [str(q.question_id) not in done for q in part]
                if any(missing):
                    _answer_window(part, missing, generator, batch_size, model_id, f, clock, bar)
                    write_sidecar(sidecar, answers_file, generator.model, clock, extra)
        return write_sidecar(sidecar, answers_file, generator.model, clock, extra)


def _answer_window(
    part: Sequence[Question],
    missing: Sequence[bool],
    generator: AnswerGenerator,
    batch_size: int,
    model_id: str,
    out: IO[str],
    clock: RunClock,
    bar: tqdm,
) -> None:
    """Answer the ``missing`` questions of ``part`` in length-grouped batches planned over all of ``part``, writing
    each line once every earlier missing one of ``part`` is out."""
    results: dict[int, dict[str, Any]] = {}
    written = 0
    for idx in plan_batches([generator.batch_key(q) for q in part], batch_size):
        if not any(missing[i] for i in idx):
            continue  # answered by an earlier run, in this same batch
        t0 = time.perf_counter()
        answers = generator.generate([part[i] for i in idx])
        clock.seconds += time.perf_counter() - t0
        clock.answers += sum(a.skipped is None for a in answers)
        real, padding = generator.prefill_positions(answers)
        clock.prompt_tokens += real
        clock.padding_tokens += padding
        for i, a in zip(idx, answers, strict=True):
            if missing[i]:
                results[i] = answer_record(part[i], a.text, model_id, a.metadata())
        while written < len(part) and (not missing[written] or written in results):
            if missing[written]:  # the next line in question order is ready: one write, then flush
                out.write(json.dumps(results.pop(written)) + "\n")
                out.flush()
                bar.update(1)
            written += 1
