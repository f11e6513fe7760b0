"""The shipped default model: assembled from the committed parts and the SmolLM2 GGUF, verified,
cached, reused — and it really answers region questions on MedSynth test images it never saw."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from assistant import load_assistant
from assistant.chat import ChatSession, SamplingParams
from assistant.default_model import PARTS_DIR, AssemblyError, assemble, default_model_path
from assistant.default_model.assemble import CHECKSUMS_FILE, MANIFEST_FILE, PARTS_FILE
from evaluation.benchmark import load_benchmark
from evaluation.medsynth import generate
from medp_base.cases import SAMPLES, read_cases
from medp_base.image_io import load_image

MAX_PARTS_MB = 40


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("medp-cache")
    old = os.environ.get("MEDP_CACHE")
    os.environ["MEDP_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["MEDP_CACHE"]
    else:
        os.environ["MEDP_CACHE"] = old


@pytest.fixture(scope="module")
def default_dir(cache):
    return default_model_path()


def test_the_committed_parts_are_small_and_complete():
    size = sum(p.stat().st_size for p in PARTS_DIR.iterdir() if p.suffix in (".json", ".safetensors"))
    assert size < MAX_PARTS_MB * 2**20
    manifest = json.loads((PARTS_DIR / MANIFEST_FILE).read_text())
    assert set(manifest["sha256"]) == {PARTS_FILE, "config.json", "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_assembled_once_then_reused_and_reassembled_when_damaged(default_dir, cache):
    assert (default_dir / "model.safetensors").exists() and (default_dir / CHECKSUMS_FILE).exists()
    stamp = (default_dir / "model.safetensors").stat().st_mtime_ns
    assert default_model_path() == default_dir  # reused: checksums match, nothing written
    assert (default_dir / "model.safetensors").stat().st_mtime_ns == stamp
    config = default_dir / "config.json"
    config.write_text(config.read_text().replace('"medp"', '"medp" ', 1))  # a changed file in the cache
    assert default_model_path() == default_dir
    assert (default_dir / "model.safetensors").stat().st_mtime_ns != stamp  # assembled again
    assert json.loads(config.read_text())["model_type"] == "medp"


def test_a_changed_part_or_a_wrong_probe_is_refused(tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(PARTS_DIR, parts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    manifest = json.loads((parts / MANIFEST_FILE).read_text())
    with open(parts / PARTS_FILE, "r+b") as f:  # one flipped byte in the weights
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(AssemblyError, match="sha256"):
        assemble(tmp_path / "out", parts)
    shutil.copy(PARTS_DIR / PARTS_FILE, parts / PARTS_FILE)
    manifest["probe"]["logits"] = [v + 1.0 for v in manifest["probe"]["logits"]]  # a model that is not this one
    (parts / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(AssemblyError, match="probe"):
        assemble(tmp_path / "out", parts)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_identifies_findings_on_unseen_medsynth_test_images(default_dir, tmp_path):
    generate(tmp_path, seed=1, images_per_background=2, sheet_samples=0,
             backgrounds=["x-ray-RG3", "ct-", "mr-", "ultrasound-", "fundus-test", "tissue-test", "mni152-axial-z+30"])
    items = [i for i in load_benchmark(tmp_path / "test.jsonl") if i.task == "identification"]
    assert len(items) >= 20
    model, processor = load_assistant(default_dir)
    results = []
    for item in items:
        chat = ChatSession(model, processor, load_image(item.image).pixels)
        chat.add_region(item.regions[0])
        answer = chat.ask(item.question, SamplingParams(max_new_tokens=16))
        results.append((item.meta["label"], item.score(answer, [])["accuracy"] == 1.0, len(item.meta["choices"])))
    assert sum(ok for _, ok, _ in results) > len(results) / 2, results  # a majority right
    # and more findings named than guessing among each item's choices would (a model that always says
    # "normal tissue" names none); the card reports how far this model is from naming most of them
    findings = [(ok, n) for label, ok, n in results if label != "normal tissue"]
    assert sum(ok for ok, _ in findings) > sum(1 / n for _, n in findings), results


def test_chat_and_serve_use_the_default_model(default_dir, cache):
    env = {**os.environ, "MEDP_CACHE": str(cache)}
    case = read_cases()[0]
    image = SAMPLES / case["image"]
    chat = subprocess.run([sys.executable, "-m", "medp_cli", "chat", "--image", str(image), "--region",
                           json.dumps(case["regions"][0]), "What is in <region1>?"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert chat.returncode == 0, chat.stderr
    assert case["truth"][0] in chat.stdout.lower()
    from argparse import Namespace

    from assistant.serving.cli import vllm_command

    args = Namespace(model="default", host="127.0.0.1", port=8000, allow_no_key=False, served_model_name=None,
                     max_model_len=None, max_regions=None, dtype=None, kv_cache_gib=2.0, api_key=None)
    command, _ = vllm_command(args, [])
    assert command[command.index("--model") + 1] == str(default_dir)
    assert command[command.index("--served-model-name") + 1] == "medp-default"


def test_demo_answers_the_bundled_cases_and_draws_them(default_dir, cache, tmp_path):
    result = subprocess.run([sys.executable, "-m", "medp_cli", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "MEDP_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    cases = read_cases()
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(c["name"] for c in cases)
    questions = sum(len(c["regions"]) + len(c["grounding"]) for c in cases)
    assert len((tmp_path / "answers.md").read_text().splitlines()) == 2 + questions
    assert result.stdout.count("✓") + result.stdout.count("✗") == questions
    assert f"/{questions} correct" in result.stdout  # how many: MODEL_CARD.md (identification is tested above)


def test_the_committed_config_names_no_path_of_the_machine_that_built_it():
    from assistant.default_model import PARTS_DIR

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        return [node] if isinstance(node, str) else []

    config = json.loads((PARTS_DIR / "config.json").read_text())
    assert not [s for s in strings(config) if s.startswith("/") or "site-packages" in s]
