"""``medp data ...`` (check a training file, import other formats) and ``medp train``, registered
with the ``medp`` command (:mod:`medp_cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medp_base.data import KINDS, check_jsonl
from medp_base.importers import import_llava, import_slake
from medp_base.limits import MAX_REGIONS

from .config import TrainConfig
from .grounding import train_grounding
from .trainer import run


def add_parsers(sub) -> None:
    add_data_parser(sub)
    add_train_parser(sub)
    add_grounding_parser(sub)


def add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="check or import training data (JSONL, DESIGN.md §5)")
    actions = data.add_subparsers(dest="data_command", required=True)
    check = actions.add_parser("check", help="report every bad line (file:line: reason) and statistics")
    check.add_argument("file", type=Path)
    check.add_argument("--image-root", type=Path, help="folder the image paths are relative to (default: the file's)")
    check.add_argument("--max-regions", type=int, default=MAX_REGIONS)
    check.add_argument("--kind", choices=KINDS, default="chat",
                       help="chat: conversations (stages 1-2); caption: captioned images and regions (stage 0); "
                            "seg: images and the regions to segment (the seg stage)")
    llava = actions.add_parser("import-llava", help="a LLaVA conversation JSON -> MedP JSONL")
    llava.add_argument("src", type=Path)
    llava.add_argument("dst", type=Path)
    slake = actions.add_parser("import-slake", help="SLAKE (QA, detection.json boxes, mask.png) -> MedP JSONL")
    slake.add_argument("root", type=Path, help="the Slake1.0 folder (imgs/, train.json, ...)")
    slake.add_argument("dst", type=Path)
    slake.add_argument("--split", default="train", help="train | validate | test, or a QA JSON file")
    slake.add_argument("--lang", default="en", help="keep questions of this q_lang (en or zh)")
    slake.add_argument("--regions", choices=("mask", "box", "none"), default="mask")
    slake.add_argument("--kind", choices=("chat", "caption"), default="chat",
                       help="chat: QA + region naming (stages 1-2); caption: stage-0 caption samples")
    data.set_defaults(run=lambda args, extra: run_data(args))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe and its overrides: ``medp train`` and ``python -m train_sft`` (multi-process launches) alike."""
    parser.add_argument("config", type=Path, help="a YAML file of train_sft.config.TrainConfig settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the recipe (the value read as YAML); repeat for more")


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="fine-tune a MedP model from a YAML recipe (resumes by itself)")
    add_train_arguments(train)
    train.set_defaults(run=lambda args, extra: run_train(args))


def add_grounding_parser(sub) -> None:
    ground = sub.add_parser("train-grounding", help="fit a checkpoint's grounding head (where a named finding lies) "
                                                   "on a file's grounded answers, the tower frozen")
    ground.add_argument("model", help="a MedP checkpoint folder, or 'default'")
    ground.add_argument("--data", required=True, type=Path, help="training JSONL with <ref>..</ref><box>[..]</box> answers")
    ground.add_argument("--eval-data", type=Path, help="held-out JSONL: its answers are scored, not fitted")
    ground.add_argument("--out", required=True, type=Path, help="writes OUT/final (the checkpoint with the head) "
                                                               "and OUT/grounding_head.json")
    ground.add_argument("--steps", type=int, default=300)
    ground.add_argument("--lr", type=float, default=1e-2)
    ground.add_argument("--weight-decay", type=float, default=1e-3)
    ground.set_defaults(run=lambda args, extra: run_grounding(args))


def run_grounding(args: argparse.Namespace) -> int:
    record = train_grounding(args.model, args.data, args.out, args.eval_data, args.steps, args.lr,
                             args.weight_decay)
    held_out = f"; held out {record['eval_hit_rate']:.3f}" if "eval_hit_rate" in record else ""
    print(f"grounding head for {len(record['kinds'])} kinds: best cell right on {record['train_hit_rate']:.3f} of the "
          f"training answers{held_out}; checkpoint {args.out / 'final'}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    out = run(TrainConfig.from_yaml(args.config, args.set))
    print(f"done: {out}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        report = check_jsonl(args.file, args.image_root, args.max_regions, kind=args.kind)
        for error in report.errors:
            print(error)
        print(report.summary(), file=sys.stderr if report.errors else sys.stdout)
        return 1 if report.errors else 0
    if args.data_command == "import-slake":
        count = import_slake(args.root, args.dst, args.split, args.lang, args.regions, args.kind)
    else:
        count = import_llava(args.src, args.dst)
    kind = " --kind caption" if getattr(args, "kind", "chat") == "caption" else ""
    print(f"wrote {count} samples to {args.dst}; check them with: medp data check{kind} {args.dst}")
    return 0
