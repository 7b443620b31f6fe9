#!/usr/bin/env bash
# Start one of the real backends by hand, in the foreground, on 127.0.0.1:
#   tests/real/serve.sh llama-server [PORT] [extra llama-server flags...]
#   tests/real/serve.sh python [PORT] [extra llama_cpp.server flags...]
# then point Fellowship at it: LLM_BASE_URL=http://127.0.0.1:PORT/v1 make run.
# Run tests/real/build.sh first. The tests start their own servers; this is for people.
set -euo pipefail

CACHE=${FELLOWSHIP_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fellowship/real}
which=${1:-llama-server}
port=${2:-8080}
shift $(($# > 2 ? 2 : $#))

for needed in "$CACHE/model.gguf" "$CACHE/bin/llama-server" "$CACHE/venv/bin/python"; do
  [[ -e "$needed" ]] || { echo "missing $needed: run tests/real/build.sh first" >&2; exit 1; }
done

case "$which" in
  llama-server)
    exec "$CACHE/bin/llama-server" --model "$CACHE/model.gguf" --host 127.0.0.1 \
      --port "$port" --jinja --parallel 2 --ctx-size 8192 --no-webui "$@"
    ;;
  python)
    exec "$CACHE/venv/bin/python" -m llama_cpp.server --model "$CACHE/model.gguf" \
      --host 127.0.0.1 --port "$port" --n_ctx 4096 "$@"
    ;;
  *)
    echo "usage: $0 llama-server|python [PORT] [extra flags...]" >&2
    exit 2
    ;;
esac
