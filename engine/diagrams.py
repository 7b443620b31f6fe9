"""State diagrams drawn from the machine classes themselves (SPEC §13).

`render_all()` gives every generated file (DOT, SVG when Graphviz is installed,
and `docs/state-machines.md` with Mermaid text); `fellowship diagrams` writes
them and `--check` compares them with what is committed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from statemachine.contrib.diagram import DotGraphMachine, MermaidGraphMachine

from engine.machines import LifecycleMachine, LoopMachine

MACHINES = {"lifecycle": LifecycleMachine, "loop": LoopMachine}
_OBJECT_IDS = re.compile(r"(__(?:initial|atomic)_)\d+")

INTRO = """# State machines

Fellowship's behaviour is defined by two `python-statemachine` classes in
`engine/machines.py`. This page and the pictures in `docs/diagrams/` are generated
from those classes by `fellowship diagrams` (`make diagrams`); `make test` fails
when they are out of date, so what you read here is what the code does.

- **Lifecycle**: the session as clients see it. `pause`, `resume` and `end` come
  from the API; anything not drawn here answers 409.
- **Loop**: the per-session driver. In `idle` it decides what comes next (a limit,
  a summary, waiting for a talker, asking the orchestrator, or a bot turn).
  A pause asked during `dispatching` takes effect after the reply is recorded.
"""


def dot_source(name: str) -> str:
    """Graphviz DOT text of one machine, with object ids replaced by stable names."""
    graph = DotGraphMachine(MACHINES[name])()  # type: ignore[no-untyped-call]
    stable: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return stable.setdefault(match.group(0), f"{match.group(1)}{len(stable) + 1}")

    return _OBJECT_IDS.sub(rename, graph.to_string())


def mermaid_source(name: str) -> str:
    """Mermaid `stateDiagram-v2` text of one machine."""
    text = MermaidGraphMachine(MACHINES[name])()  # type: ignore[no-untyped-call]
    return str(text).rstrip() + "\n"


def markdown_page() -> str:
    """`docs/state-machines.md`: the intro plus one Mermaid block and picture per machine."""
    parts = [INTRO]
    for name in MACHINES:
        parts.append(
            f"\n## {name.capitalize()} machine\n\n![{name}](diagrams/{name}.svg)\n\n"
            f"```mermaid\n{mermaid_source(name)}```\n"
        )
    return "".join(parts)


def render_all(docs_dir: Path, *, svg: bool) -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {docs_dir / "state-machines.md": markdown_page()}
    for name in MACHINES:
        dot = dot_source(name)
        files[docs_dir / "diagrams" / f"{name}.dot"] = dot
        if svg:
            files[docs_dir / "diagrams" / f"{name}.svg"] = dot_to_svg(dot)
    return files


def graphviz_available() -> bool:
    """Whether the `dot` program is installed."""
    return shutil.which("dot") is not None


def dot_to_svg(dot: str) -> str:
    """Render DOT text to SVG with Graphviz."""
    result = subprocess.run(
        ["dot", "-Tsvg"],  # noqa: S607 - Graphviz found on PATH
        input=dot,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout
