"""Benchmark: seconds per answer of batched answer generation with a ViT or DRIP tower, padded vs packed prefill.

Run (from the repository root):

    python benchmarks/answer_speed.py [--towers-from checkpoints/demo/towers] [--model checkpoints/demo/base-llm]
                                      [--batch 8] [--questions 48] [--max-new-tokens 8] [--rounds 5] [--threads 1]

What runs: ``llava.eval.generation.generate_answers`` (what ``model_vqa_science`` runs) on the ScienceQA questions of
a small freshly generated demo world (``llava_drip_demo.demo_world``; about a tenth text-only), greedy, batches of
``--batch`` questions grouped by prompt length, fixed ``--max-new-tokens`` (random LLMs rarely stop earlier). The
model is the demo-size LLaVA of ``benchmarks/train_step.py`` (the demo's base LLM when ``checkpoints/demo/base-llm``
exists, else a random Llama of its shape: hidden 128, 4 layers; an ``mlp2x_gelu`` projector) with the towers
``drip:ViT-tiny`` (64 tokens per image), ``drip:DRIP-2x-tiny`` and ``drip:DRIP-tiny`` (DRIP-4x): trained ones from
``--towers-from``, else random towers with the eval threshold calibrated on the world's images (train_step's rule).

Layouts of the LLM prefill (``llava.model.packed_prefill``; decoding continues left-padded in all three):
``padded`` (left-padded prompts, ``--packed_prefill False``), ``packed`` (the default: rows planned by cost for
SDPA) and ``packed-1row`` (every prompt in one row, the layout flash varlen uses on CUDA; on CPU SDPA computes the
whole row's scores).

Figures: visual tokens per image, the prefill's padding share (the sidecar's ``prompt_padding_share``), seconds per
answer (the sidecar's ``seconds_per_answer``: generation time only; median over ``--rounds`` interleaved rounds after
one warm-up round, every round running every configuration once from a rotating start), its ratio to the ViT in the
same layout and to the same tower's padded prefill, and whether the answers equal the padded prefill's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from train_step import prepare_llm, prepare_towers  # a sibling script of this benchmark
from transformers import AutoTokenizer

from llava.eval.generation import AnswerGenerator, GenerationSettings, generate_answers
from llava.eval.model_vqa_science import load_science_questions
from llava.jsonl import read_jsonl
from llava.model import LlavaLlamaForCausalLM
from llava.train.args import ModelArguments
from llava_drip_demo.demo_world import WorldConfig, generate

TOWERS = {"ViT": "ViT-tiny", "DRIP-2x": "DRIP-2x-tiny", "DRIP-4x": "DRIP-tiny"}
LAYOUTS = {"padded": (False, None), "packed": (True, None), "packed-1row": (True, True)}  # packed prefill, one row


def build_generator(llm: str, tower_dir: str, settings: GenerationSettings, images: str) -> AnswerGenerator:
    """The demo-size LLaVA with one tower; the same projector initialisation for every tower."""
    model = LlavaLlamaForCausalLM.from_pretrained(llm, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    args = ModelArguments(vision_tower=f"drip:{tower_dir}", mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = "pad"
    model.generation_config.eos_token_id = None  # every answer runs --max-new-tokens decode steps
    tokenizer = AutoTokenizer.from_pretrained(llm)
    return AnswerGenerator(model.eval(), tokenizer, model.get_vision_tower().image_processor, settings, images)


def run_once(generator: AnswerGenerator, layout: str, questions, batch: int, out: Path) -> dict:
    """One answers file written afresh with ``layout``'s prefill; returns the sidecar plus the answer texts."""
    packed, single_row = LAYOUTS[layout]
    generator.model.set_packed_prefill(packed)
    generator.model.set_packing(True, single_row=single_row)
    summary = generate_answers(
        questions, generator, str(out), "bench", batch_size=batch, overwrite=True, progress=False
    )
    summary["texts"] = [r["text"] for r in read_jsonl(str(out), required=("text",))]
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--towers-from", default=None, help="trained towers DIR/<preset> (the demo's checkpoints)")
    ap.add_argument("--model", default="auto", help="base LLM directory (default: the demo's, else random)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--questions", type=int, default=48, help="ScienceQA questions of the generated world")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        world = work / "world"
        generate(
            world,
            WorldConfig(
                n_pretrain=16, n_instruct=64, n_sqa=args.questions, n_bench=3, n_clip=4, n_zeroshot_per_class=1
            ),
        )
        llm, llm_note = prepare_llm(work, world, args.model)
        towers = prepare_towers(work, world, args.towers_from)
        question_file = next(world.rglob("llava_test_CQM-A.json"))
        questions = load_science_questions(str(question_file), single_pred_prompt=True)
        settings = GenerationSettings("vicuna_v1", temperature=0.0, max_new_tokens=args.max_new_tokens)
        image_root = str(question_file.parent / "images" / "test")  # LLaVA's layout (scripts/v1_5/eval/sqa.sh)
        gens = {name: build_generator(llm, towers[preset][0], settings, image_root) for name, preset in TOWERS.items()}
        keys = [(tower, layout) for tower in TOWERS for layout in LAYOUTS]
        times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
        last: dict[tuple[str, str], dict] = {}
        for r in range(args.rounds + 1):
            for i in range(len(keys)):
                key = keys[(i + r) % len(keys)]
                last[key] = run_once(gens[key[0]], key[1], questions, args.batch, work / "answers.jsonl")
                if r:  # round 0 warms up
                    times[key].append(last[key]["seconds_per_answer"])
        notes = [llm_note, *(towers[p][1] for p in TOWERS.values())]
        print_table(times, last, args, len(questions), notes)


def print_table(times, last, args, n_questions: int, notes: list[str]) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"Answer generation on CPU ({args.threads} thread(s)), {n_questions} ScienceQA questions of a demo world, "
        f"batch {args.batch}, {args.max_new_tokens} new tokens each, greedy, fp32, SDPA; median of {args.rounds} "
        "interleaved rounds."
    )
    for note in notes:
        print(f"  {note}")
    print(
        "\n| tower | prefill | visual tokens / image | prefill padding | ms / answer | vs ViT | vs padded "
        "| answers = padded |\n|---|---|---:|---:|---:|---:|---:|---|"
    )
    for tower, layout in times:
        s = last[(tower, layout)]
        vis = f"{s['visual_tokens_mean']:.1f} ({s['visual_tokens_min']}-{s['visual_tokens_max']})"
        same = s["texts"] == last[(tower, "padded")]["texts"]
        t = med[(tower, layout)]
        ratios = f"{t / med[('ViT', layout)]:.3f} | {t / med[(tower, 'padded')]:.3f}"
        print(
            f"| {tower} | {layout} | {vis} | {s['prompt_padding_share']:.3f} | {1e3 * t:.1f} | {ratios} "
            f"| {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
