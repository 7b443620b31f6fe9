"""The session chart's picture and rules, drawn from the chart class itself (SPEC §13).

`render_all()` gives every generated file (DOT, SVG when Graphviz is installed,
and `docs/state-machines.md` with the rules table and Mermaid text); `fellowship
diagrams` writes them and `--check` compares them with what is committed.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

from statemachine import State
from statemachine.contrib.diagram import DotGraphMachine, MermaidGraphMachine

from engine.chart import LOOP_STATES, SessionChart

# One chart; the console and the docs know its picture as "loop".
MACHINES = {"loop": SessionChart}
_OBJECT_IDS = re.compile(r"(__(?:initial|atomic)_)\d+")
# Callbacks every transition has by convention; not part of the rules.
_CONVENTION = re.compile(r"^on_(transition|next)$")

INTRO = """# State machines

Fellowship's behaviour is defined by one `python-statemachine` chart,
`SessionChart` in `engine/chart.py`. This page and the pictures in `docs/diagrams/`
are generated from that class by `fellowship diagrams` (`make diagrams`); `make test`
fails when they are out of date, so what you read here is what the code does.

A session is one parallel state with two regions, plus its end:

- **Lifecycle**: what clients asked for. `pause`, `resume` and `end` come from the
  API; an event not drawn from the current state answers 409. Clients see
  `active`, `paused` (`pause_asked`) and `ended` (`end_asked`, or the chart's
  `ended`) as the status `state`.
- **Loop**: what the driver (`engine/loop.py`) is doing; its state is the `state`
  event and the status `loop_state`. In each loop state the driver does that
  state's work, then sends `next`; the chart takes the first of the state's
  transitions whose guard holds, in the order of the table below.
- **Ended**: final. `finish` (a DELETE, the idle timeout, an unrecoverable error)
  leaves both regions from anywhere; the loop's own rules end it too. A session
  with `max_time` also has a deadline that ends it wherever the loop is.

A pause only asks: the loop reaches `paused` at its next step, so a reply being
generated (`dispatching`) or a summary being made is finished and recorded first,
and an orchestrator's choice made meanwhile is dropped and made afresh at resume.

## The work of each loop state

| Loop state | The driver's work before `next` |
|---|---|
| `idle` | nothing, or the `turn_delay` when a rest was taken |
| `awaiting_talker` | wait for a talker message or a pause |
| `orchestrating` | ask the orchestrator who speaks (one LLM call) |
| `dispatching` | reserve the speaker's slot (round robin: next in turn), run the turn |
| `summarizing` | summarize the context (one LLM call) |
| `paused` | wait for a resume |
"""


def dot_source(name: str) -> str:
    """Graphviz DOT text of one chart, with object ids replaced by stable names."""
    graph = DotGraphMachine(MACHINES[name])()  # type: ignore[no-untyped-call]
    stable: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return stable.setdefault(match.group(0), f"{match.group(1)}{len(stable) + 1}")

    return _OBJECT_IDS.sub(rename, graph.to_string())


def mermaid_source(name: str) -> str:
    """Mermaid `stateDiagram-v2` text of one chart."""
    text = MermaidGraphMachine(MACHINES[name])()  # type: ignore[no-untyped-call]
    return str(text).rstrip() + "\n"


def rules_table() -> str:
    """The loop's `next` transitions, state by state, in the order the chart tries them."""
    rows = ["| In | `next` when | goes to | and |", "|---|---|---|---|"]
    for state_id in LOOP_STATES:
        state: State = SessionChart.states_map[state_id]
        for transition in state.transitions:
            if "next" not in {str(event) for event in transition.events}:
                continue
            guards = " and ".join(f"`{c}`" for c in transition.cond) or "always"
            target = "(stays)" if transition.target is None else f"`{transition.target.id}`"
            actions = [str(c) for c in transition.on if not _CONVENTION.match(str(c))]
            rows.append(f"| `{state_id}` | {guards} | {target} | {', '.join(actions) or '—'} |")
    return "\n".join(rows) + "\n"


def callbacks_table() -> str:
    """Each guard and action the chart names, with what it means (its docstring)."""
    rows = ["| Guard or action | Meaning |", "|---|---|"]
    rows.append("| `In('pause_asked')` | A client asked to pause (the lifecycle region). |")
    for name, member in vars(SessionChart).items():
        if name.startswith("_") or not inspect.isfunction(member) or not member.__doc__:
            continue
        if name in {"fire", "allows"} or name.startswith("on_enter") or name.startswith("on_exit"):
            continue
        rows.append(f"| `{name}` | {inspect.cleandoc(member.__doc__)} |")
    return "\n".join(rows) + "\n"


def markdown_page() -> str:
    """`docs/state-machines.md`: the intro, the rules, the picture and its Mermaid text."""
    return (
        f"{INTRO}\n## The rules of the loop\n\n{rules_table()}\n"
        f"## Guards and actions\n\n{callbacks_table()}\n"
        "## The chart\n\n![session chart](diagrams/loop.svg)\n\n"
        f"```mermaid\n{mermaid_source('loop')}```\n"
    )


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
