"""Evaluation: MedSynth (the offline region-VQA benchmark), the harness that runs MedP or any
OpenAI-compatible model on a benchmark, metrics and reports.

Public API::

    load_benchmark, Item, slake_jsonl                   # benchmark JSONL / SLAKE folder -> items
    prepare, STRATEGIES                                 # how regions reach a model (native, marker, crop, text)
    OpenAIBackend, LocalBackend                         # an endpoint, or a checkpoint in this process
    run_benchmark                                       # ask, resume, score, report
    compare_runs                                        # side-by-side report
    metrics                                             # normalisation, accuracy, token F1, IoU, Hungarian
"""

from medp_base.region_strategies import STRATEGIES, prepare

from . import metrics
from .backends import LocalBackend, OpenAIBackend
from .benchmark import Item, load_benchmark, slake_jsonl
from .report import compare_runs
from .runner import run_benchmark

__all__ = ["STRATEGIES", "Item", "LocalBackend", "OpenAIBackend", "compare_runs", "load_benchmark", "metrics",
           "prepare", "run_benchmark", "slake_jsonl"]
