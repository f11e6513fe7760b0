# The two commands of the README. Both build .venv first (fast when it is already up to date).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup chat demo test bench screenshots
setup:
	./scripts/setup.sh

chat: setup
	$(VENV)/bin/medp ui

demo: setup
	$(VENV)/bin/medp demo --out out/demo

test: setup
	./scripts/browser.sh
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

bench: setup
	$(PY) benchmarks/vision_tower.py
	$(PY) benchmarks/assistant.py
	$(PY) benchmarks/training.py

# The README's screenshots of the app, taken by the end-to-end browser test (tests/ui/test_app.py).
screenshots: setup
	./scripts/browser.sh
	$(PY) -m pytest -q -p no:cacheprovider tests/ui/test_app.py -k browser
	mkdir -p docs/screenshots && cp out/screenshots/*.png docs/screenshots/
