#!/usr/bin/env bash
# The UI's end-to-end test drives Debian's chromium with Playwright (DESIGN.md §7): install it from the
# distribution's packages if it is missing. Playwright never downloads a browser here.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
echo "browser: installing chromium from the Debian packages"
sudo=()
[[ "$(id -u)" == 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium
chromium --version
