"""The embedded backend: llama.cpp's `llama-server`, built once from source and supervised.

`fellowship serve` with an empty `LLM_BASE_URL` runs a real model without any LLM
server installed: `recipe` says what is built and where it is cached, `build` builds
it (with progress), `model` finds the GGUF file, `supervisor` keeps the process alive,
and `backend` ties them together for the server. `make test-real` builds through the
same recipe, so both share one cache.
"""
