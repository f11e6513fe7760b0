"""``medp synth`` (write MedSynth) and ``medp eval run | compare | zero-shot | location-probe | segment |
refine-boxes`` (the harness), registered
with the ``medp`` command (:mod:`medp_cli`)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path

from openai import APIError

from assistant.default_model import resolve_model
from medp_base.region_strategies import STRATEGIES
from vision_tower.segmenter import Segmenter

from .backends import LocalBackend, OpenAIBackend
from .benchmark import is_slake, load_benchmark, of_tasks, sample_items, slake_jsonl
from .location_probe import location_probe
from .medsynth import SynthOptions, generate
from .refine_boxes import refine_run
from .report import compare_runs, fmt_cell
from .runner import run_benchmark
from .seg_baselines import CLASSICAL, make_baseline
from .seg_medp import MedPInteractive
from .segmentation import MAX_CLICKS, load_targets, run_segmentation_eval
from .zero_shot import zero_shot


def add_parsers(sub) -> None:
    synth = sub.add_parser("synth", help="write the MedSynth region-VQA dataset (seeded, offline)")
    synth.add_argument("--out", type=Path, default=Path("data/medsynth"))
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--images-per-background", type=int, default=4)
    synth.add_argument("--backgrounds", nargs="*", help="only backgrounds whose names start with these")
    synth.add_argument("--train-scenes-per-modality", type=int, default=0,
                       help="draw more scenes of a training modality's backgrounds until it has this many "
                            "(brain MRI has 24 slices, the other modalities one or two images); test split unchanged")
    synth.add_argument("--train-yes-no-per-finding", action="store_true",
                       help="also ask yes/no of every training finding on one region, by its own kind and by "
                            "another that fits the image; test split unchanged")
    synth.add_argument("--yes-no-explained", action="store_true",
                       help="yes/no answers name what the region shows, then the verdict "
                            "('An abscess, not a cyst, so no.'), in both splits")
    synth.add_argument("--same-kind-explained", action="store_true",
                       help="'same kind?' comparisons name both regions, then the verdict "
                            "('<region1> is a mass and <region2> is a cyst, so no.'), in both splits")
    synth.add_argument("--larger-explained", action="store_true",
                       help="'which is larger?' answers give both regions' shares of the image, then the verdict "
                            "('<region1> covers 0.41%% of the image and <region2> 1.2%%, so <region2> is larger.'), "
                            "in both splits")
    synth.add_argument("--field-of-view", action="store_true",
                       help="a question about an image whose pixel spacing is known states the image's field of "
                            "view after <image> ('Field of view: 240 mm x 180 mm.'), in both splits; a size is "
                            "then stated exactly where a scale was given")
    synth.add_argument("--counting-grounded", action="store_true",
                       help="counting answers give every instance's box as grounding does, then the count "
                            "('<ref>cyst</ref><box>[...]</box>, so 1.'; 'No cysts, so 0.'), in both splits")
    synth.set_defaults(run=lambda args, extra: run_synth(args))
    ev = sub.add_parser("eval", help="evaluate a model on a benchmark, or compare runs")
    evsub = ev.add_subparsers(dest="eval_command", required=True)
    ev.set_defaults(run=lambda args, extra: run_eval(args))
    run = evsub.add_parser("run", help="run a model on a benchmark (resumes an interrupted run in --out)")
    run.add_argument("--benchmark", type=Path, required=True, help="a benchmark JSONL, or a SLAKE folder")
    run.add_argument("--slake-split", default="test", help="the SLAKE split when --benchmark is a SLAKE folder")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    where.add_argument("--local", help="a MedP checkpoint folder run in this process ('default': the default model)")
    run.add_argument("--model", help="the served model's name (default: the first the endpoint lists)")
    run.add_argument("--api-key", default=os.environ.get("MEDP_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                     help="endpoint key (default: $MEDP_API_KEY or $OPENAI_API_KEY)")
    run.add_argument("--strategy", choices=STRATEGIES, default="native",
                     help="how regions reach the model: native (MedP) or, for models without region input, "
                          "marker, crop or text")
    run.add_argument("--out", type=Path, required=True, help="the run folder")
    run.add_argument("--limit", type=int, help="only the first N items")
    run.add_argument("--sample", type=int, help="a random N items (seeded by --seed, so the same for every run)")
    run.add_argument("--task", action="append", help="only items of this task, before --limit and --sample "
                                                     "(repeat for several: --task yes/no --task counting)")
    run.add_argument("--max-tokens", type=int, default=128)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--concurrency", type=int, default=1,
                     help="requests in flight at once (an endpoint batches them; 1 for a local model)")
    run.add_argument("--no-instructions", action="store_true", help="ask without the answer-format line")
    zero = evsub.add_parser("zero-shot", help="MedP-CLIP zero-shot classification of the identification regions")
    zero.add_argument("--clip", type=Path, required=True, help="a MedP-CLIP folder (e.g. stage 0's final/)")
    zero.add_argument("--benchmark", type=Path, required=True, help="a benchmark JSONL with identification items")
    zero.add_argument("--out", type=Path, required=True)
    zero.add_argument("--sample", type=int, help="a random N of the identification items (seeded by --seed)")
    zero.add_argument("--seed", type=int, default=0)
    zero.add_argument("--template", default="{}", help="caption template for each label")
    probe = evsub.add_parser("location-probe", help="a linear probe per finding kind: do an assistant's image tokens "
                                                   "place a grounding item's finding?")
    probe.add_argument("--model", required=True, help="a MedP checkpoint folder ('default': the default model)")
    probe.add_argument("--train", type=Path, required=True, help="a benchmark JSONL to fit on (its grounding items)")
    probe.add_argument("--test", type=Path, required=True, help="a benchmark JSONL to score on (its grounding items)")
    probe.add_argument("--out", type=Path, required=True)
    probe.add_argument("--steps", type=int, default=300, help="full-batch Adam steps")
    probe.add_argument("--segmenter", help="also score each probe's cell through this checkpoint's mask decoder "
                                           "(a click at the cell's centre, the mask's box; 'default': the embedded one)")
    seg = evsub.add_parser("segment", help="interactive segmentation: box, 1-20 clicks, NoC, against classical "
                                          "baselines on the same prompts")
    seg.add_argument("--data", type=Path, required=True, help="a segmentation JSONL (e.g. data/medsynth/seg_test.jsonl)")
    seg.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                     help="a MedP checkpoint with a mask decoder ('default': the embedded one); repeat to compare")
    seg.add_argument("--baselines", default=",".join(CLASSICAL),
                     help=f"classical baselines to run, comma-separated (default: all of {', '.join(CLASSICAL)})")
    seg.add_argument("--out", type=Path, required=True)
    seg.add_argument("--sample", type=int, help="a random N of the targets (seeded by --seed)")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--max-clicks", type=int, default=MAX_CLICKS)
    refine = evsub.add_parser("refine-boxes", help="a finished run's boxes made tight by a mask decoder (box -> "
                                                   "mask -> its box), scored as a run of its own")
    refine.add_argument("run_dir", metavar="RUN", type=Path, help="a finished `medp eval run` folder")
    refine.add_argument("--segmenter", default="default",
                        help="a MedP checkpoint with a mask decoder ('default': the embedded one)")
    refine.add_argument("--out", type=Path, required=True)
    compare = evsub.add_parser("compare", help="side-by-side report of several runs")
    compare.add_argument("runs", nargs="+", type=Path)
    compare.add_argument("--out", type=Path, required=True)


def run_synth(args: argparse.Namespace) -> int:
    options = SynthOptions(**{f.name: getattr(args, f.name) for f in fields(SynthOptions)})
    manifest = generate(args.out, args.seed, args.images_per_background, args.backgrounds,
                        train_scenes_per_modality=args.train_scenes_per_modality, options=options)
    print(json.dumps({k: manifest[k] for k in ("samples", "captions", "tasks", "scenes")}, indent=2))
    print(f"wrote {args.out}/train.jsonl, test.jsonl, captions.jsonl, contact_sheet.png")
    return 0


def run_segment_eval(args: argparse.Namespace) -> int:
    segmenters = []
    for spec in args.model:
        name, _, folder = spec.rpartition("=")
        segmenters.append(MedPInteractive(name or "medp", Segmenter.from_pretrained(resolve_model(folder))))
    segmenters += [make_baseline(name) for name in filter(None, args.baselines.split(","))]
    targets = load_targets(args.data, args.sample, args.seed)
    summary = run_segmentation_eval(targets, segmenters, args.out, max_clicks=args.max_clicks)
    for name, s in summary["segmenters"].items():
        overall = s["all"]
        print(f"{name}: box Dice {fmt_cell(overall['box_dice'])}, 1-click Dice {fmt_cell(overall.get('dice@1'))}, "
              f"NoC@85 {fmt_cell(overall['noc@85'])}")
    print(f"wrote {args.out}/segmentation.md")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.eval_command == "compare":
        print(f"wrote {compare_runs(args.runs, args.out)}")
        return 0
    if args.eval_command == "zero-shot":
        overall = zero_shot(args.clip, args.benchmark, args.out, args.sample, args.seed, args.template)["overall"]
        print(f"{overall['n']} regions: accuracy {overall['accuracy']:.3f} (chance {overall['chance']:.3f}); "
              f"wrote {args.out}/zero_shot.md")
        return 0

    if args.eval_command == "location-probe":
        segmenter = Segmenter.from_pretrained(resolve_model(args.segmenter)) if args.segmenter else None
        rows = location_probe(args.model, args.train, args.test, args.out, args.steps, segmenter,
                              args.segmenter or "")["rows"]
        for r in rows:
            decoder = f", through the decoder {r['decoder acc@0.5']:.3f}" if "decoder acc@0.5" in r else ""
            print(f"{r['features']} ({r['grid']}x{r['grid']}): probe {r['test']:.3f} on test items "
                  f"(best constant cell {r['best constant']:.3f}, chance {r['chance']:.3f}); as boxes: Acc@0.5 "
                  f"{r['cell acc@0.5']:.3f}{decoder}")
        print(f"wrote {args.out}/location_probe.md")
        return 0
    if args.eval_command == "segment":
        return run_segment_eval(args)
    if args.eval_command == "refine-boxes":
        before = json.loads((args.run_dir / "metrics.json").read_text())["overall"]
        segmenter = Segmenter.from_pretrained(resolve_model(args.segmenter))
        after = refine_run(args.run_dir, segmenter, args.segmenter, args.out)["overall"]
        for name in ("acc@0.5", "iou"):
            if name in after:
                print(f"{name}: {before.get(name, 0):.3f} as answered, {after[name]:.3f} refined")
        print(f"wrote {args.out}/report.md")
        return 0

    benchmark = args.benchmark
    if is_slake(benchmark):
        args.out.mkdir(parents=True, exist_ok=True)
        benchmark = slake_jsonl(benchmark, args.out / f"benchmark-slake-{args.slake_split}.jsonl", args.slake_split)
    items = load_benchmark(benchmark)
    if args.task:
        items = of_tasks(items, args.task, benchmark)
    items = items[:args.limit]
    if args.sample:
        items = sample_items(items, args.sample, args.seed)

    try:
        if args.url:
            backend = OpenAIBackend(args.url, args.model, args.api_key, args.max_tokens, args.seed)
        else:
            if args.concurrency != 1:
                raise ValueError("--concurrency is for endpoints (--url); a local model answers one at a time")
            backend = LocalBackend(args.local, args.max_tokens, args.seed)
        result = run_benchmark(items, backend, args.out, args.strategy, benchmark, not args.no_instructions,
                               args.concurrency)
    except APIError as e:  # the endpoint is unreachable, refuses the key, or failed: what was answered is kept
        raise OSError(f"the endpoint {args.url} failed ({e}); the answers so far are kept in {args.out}, "
                      "run the same command again to continue") from None
    overall = result["overall"]
    print(f"{len(items)} items, {result['errors']} refused: " +
          ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if k != "n"))
    print(f"wrote {args.out}/report.md")
    return 0
