"""``python -m assistant.default_model pack SFT_DIR``: write the committed parts from a finished run;
``python -m assistant.default_model path``: assemble (if needed) and print the cached folder."""

import argparse
import logging

from . import default_model_path
from .pack import pack

parser = argparse.ArgumentParser(prog="python -m assistant.default_model")
sub = parser.add_subparsers(dest="command", required=True)
sub.add_parser("pack", help="write assistant/default_model/ from a LoRA SFT output folder").add_argument("sft_dir")
sub.add_parser("path", help="assemble the default model if needed and print its folder")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
if args.command == "pack":
    manifest = pack(args.sft_dir)
    print(f"packed; probe drift from the trained model {manifest['probe_drift_from_trained']}")
else:
    print(default_model_path())
