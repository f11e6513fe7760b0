"""``medp demo``: a MedP model (by default the embedded one) answers questions about the bundled
sample cases — what each circled region shows, and where each finding is — beside the truth.

The cases (``medp_base/samples/cases.json``, written by ``python -m evaluation.medsynth.cases``) are
MedSynth test-split scenes: synthetic findings drawn on real images the default model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from medp_base.cases import case_image, read_cases
from medp_base.grounding import box_masks, iou, parse_grounded
from medp_base.image_io import load_image
from medp_base.regions import region_from_json
from medp_base.render import draw_boxes, draw_regions, to_rgb_image

from .build import load_assistant
from .chat import ChatSession, SamplingParams

GREEDY = SamplingParams(max_new_tokens=48)


@dataclass
class DemoAnswer:
    case: str
    question: str
    answer: str
    truth: str
    correct: bool


def ask_case(model, processor, case: dict) -> tuple[list[DemoAnswer], object]:
    """Every region's identification and every finding's grounding; -> answers and an annotated PIL image."""
    image = load_image(case_image(case), name=case["image"])
    h, w = image.pixels.shape[:2]
    answers, found, found_masks = [], [], []
    for k, (region, truth) in enumerate(zip(case["regions"], case["truth"]), 1):
        chat = ChatSession(model, processor, image.pixels)
        chat.add_region(region)  # one region per question, as the model was trained
        answer = chat.ask("What is in <region1>?", GREEDY)
        answers.append(DemoAnswer(case["name"], f"What is in region {k}?", answer, truth,
                                  truth.lower() in answer.lower()))
    for g in case["grounding"]:
        chat = ChatSession(model, processor, image.pixels)
        answer = chat.ask(f"Where is the {g['kind']} in this image? Answer with its bounding box.", GREEDY)
        boxes = parse_grounded(answer, (h, w)).boxes
        found += boxes
        found_masks += box_masks(boxes, chat.grounding, (h, w))
        hit = any(iou(b.box, t) >= 0.5 for b in boxes for t in g["boxes"])
        answers.append(DemoAnswer(case["name"], f"Where is the {g['kind']}?", answer,
                                  " ".join(str([round(v) for v in t]) for t in g["boxes"]), hit))
    prompts = [region_from_json(r, i) for i, r in enumerate(case["regions"], 1)]
    annotated = draw_boxes(draw_regions(to_rgb_image(image.pixels), prompts), found, first_colour=len(prompts),
                           masks=found_masks)
    return answers, annotated


def run_demo(model_dir: str | Path, out: Path) -> list[DemoAnswer]:
    """Ask every sample case; write ``out/<case>.png`` (regions, grounded boxes and their masks) and
    ``out/answers.md``."""
    model, processor = load_assistant(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    answers: list[DemoAnswer] = []
    for case in tqdm(read_cases(), desc="sample cases", unit="case"):
        case_answers, annotated = ask_case(model, processor, case)
        annotated.save(out / f"{case['name']}.png")
        answers += case_answers
    lines = ["| case | question | answer | truth | |", "|---|---|---|---|---|"]
    lines += [f"| {a.case} | {a.question} | {a.answer.replace('|', '/')} | {a.truth} | {'✓' if a.correct else '✗'} |"
              for a in answers]
    (out / "answers.md").write_text("\n".join(lines) + "\n")
    return answers
