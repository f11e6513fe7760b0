"""The ``medp`` command: the one place that knows every package (DESIGN.md §6). Each package
registers its own subcommands, each with a ``run(args, extra)``:

    medp demo | encode | chat | build             assistant.cli
    medp segment | serve                          assistant.segment_cli, assistant.serving.cli
    medp data check | import-llava | import-slake  train_sft.cli (the schema itself: medp_base.data)
    medp train RECIPE.yaml                         train_sft.cli
    medp synth | eval run | compare | zero-shot | segment   evaluation.cli
    medp ui                                        ui.launch

Run ``medp <command> --help`` for each. Only ``serve`` and ``ui`` pass unknown options on (to vLLM).
"""

from __future__ import annotations

import argparse
import logging
import sys

import assistant.cli
import evaluation.cli
import train_sft.cli
import ui.launch
from assistant.default_model import AssemblyError

REGISTRARS = (assistant.cli.add_parsers, train_sft.cli.add_parsers, evaluation.cli.add_parsers,
              ui.launch.add_ui_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medp", description="MedP: region-grounded medical image understanding")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, extra)
    except (ValueError, OSError, AssemblyError) as e:  # RegionError, ImageLoadError, PromptError, JSON errors
        print(f"medp: error: {e}", file=sys.stderr)
        return 2
