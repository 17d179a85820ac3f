#!/usr/bin/env bash
# Set up everything the engine needs on a Debian machine with Python 3.11:
# Debian packages (only those missing), the virtual environment in .venv/, and the pinned
# Python packages. Idempotent: a second run with unchanged lock files only checks.
#   scripts/setup.sh          runtime
#   scripts/setup.sh --dev    runtime + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done

# Debian packages the engine and its tests use. Python wheels bundle FFmpeg (PyAV),
# libsndfile (soundfile) and OpenCV, so the list stays short: PortAudio for microphones, and
# the espeak-ng and flite speech synthesisers the training corpus is generated with (run as
# separate programs).
APT_PACKAGES=(libportaudio2 espeak-ng flite)
# Tests also drive real browsers (headless Chromium and Firefox with fake microphones) over
# WebRTC, and the websocket client's microphone through a private PulseAudio virtual device.
[ "$DEV" = 1 ] && APT_PACKAGES+=(chromium firefox-esr pulseaudio pulseaudio-utils
                                 libasound2-plugins)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 \
      && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      PYTHON=$cand; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then missing+=(python3.11 python3.11-venv); PYTHON=python3.11
elif ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then missing+=(python3.11-venv); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

locks=(requirements.lock requirements-nodeps.lock pyproject.toml)
[ "$DEV" = 1 ] && locks+=(requirements-dev.lock)
stamp=".venv/.mmgt-setup-$(cat "${locks[@]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

pip_install() {
  # Hide pip's notes about unreachable local mirror folders; keep every other message.
  .venv/bin/python -m pip --disable-pip-version-check -q install "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
echo "setup: installing pinned Python packages (a few minutes on a new machine)"
pip_install -r requirements.lock
pip_install --no-deps -r requirements-nodeps.lock
pip_install --no-deps -e .
if [ "$DEV" = 1 ]; then pip_install -r requirements-dev.lock; fi
rm -f .venv/.mmgt-setup-*
touch "$stamp"
echo "setup: done (.venv ready)"
