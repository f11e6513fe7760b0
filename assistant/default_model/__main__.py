"""``python -m assistant.default_model pack SFT_DIR``: write the committed parts from a finished run;
``python -m assistant.default_model pack-decoder SEG_DIR``: add a finished seg run's mask decoder to them;
``python -m assistant.default_model pack-grounding-head DIR``: add ``medp train-grounding``'s head to them;
``python -m assistant.default_model path``: assemble (if needed) and print the cached folder."""

import argparse
import logging

from . import default_model_path
from .pack import pack, pack_tower_module

parser = argparse.ArgumentParser(prog="python -m assistant.default_model")
sub = parser.add_subparsers(dest="command", required=True)
packer = sub.add_parser("pack", help="write assistant/default_model/ from a LoRA SFT output folder")
packer.add_argument("sft_dir")
packer.add_argument("--continued", action="store_true",
                    help="the run continued the default model (model: default): stack its adapter on the parts'")
sub.add_parser("pack-decoder", help="add a seg run's mask decoder to assistant/default_model/").add_argument("seg_dir")
sub.add_parser("pack-grounding-head", help="add medp train-grounding's head to assistant/default_model/"
               ).add_argument("run_dir")
sub.add_parser("path", help="assemble the default model if needed and print its folder")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
if args.command == "pack":
    manifest = pack(args.sft_dir, continued=args.continued)
    print(f"packed; probe drift from the trained model {manifest['probe_drift_from_trained']}")
elif args.command == "pack-decoder":
    pack_tower_module(args.seg_dir, "mask_decoder")
    print("packed the mask decoder")
elif args.command == "pack-grounding-head":
    pack_tower_module(args.run_dir, "grounding_head")
    print("packed the grounding head")
else:
    print(default_model_path())
