"""``python -m train_sft RECIPE.yaml``: the entry point for multi-process launches.

    torchrun --nproc-per-node 2 -m train_sft recipe.yaml [--set KEY=VALUE ...]
    deepspeed --num_gpus 2 --module train_sft recipe.yaml

(``--local_rank``, which the deepspeed launcher appends, is read from the environment instead.)
"""

import argparse
import sys

from .cli import add_train_arguments, run_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_sft", description="train MedP from a YAML recipe")
    add_train_arguments(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
