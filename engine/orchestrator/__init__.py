"""The orchestrator: a hidden LLM call that picks who speaks next (`turn_order: orchestrated`).

Each decision is a fresh, stateless call that is never part of the history. The
orchestrator sees its own system prompt (what Fellowship is, every bot's name, role
and full system prompt, the goal) and the conversation so far, and answers with a
tool call: `select_speaker(bot_name)`, `hold()` (only when talkers can take part) or
`end_session(reason)` (only when a goal is set).

Where the backend takes a JSON schema (see `engine.structured`), the decision is first
asked for as structured output: a JSON object whose `bot_name` is an enum of the
roster. Models get that and tool calls wrong in many ways, so the replies are read down
a ladder and the rung that worked is reported in the `orchestrator` debug event:

0. `structured_output` the structured call's JSON answer names a bot (or holds, or
                     ends); otherwise the tool-call request below is made;
1. `tool_call`       a valid call of an offered tool;
2. `fuzzy_tool_call` a call whose tool or bot name is off by case, surrounding
                     punctuation or whitespace, or whose arguments are oddly shaped;
3. `text`            no usable call, but the reply text holds a JSON tool call, a
                     `select_speaker("Bob")`-style call, or names exactly one bot;
4. `retry`           one more call with a short correction appended (an LLM error on
                     the first call also leads here, with the original prompt);
5. `round_robin`     the next bot in spec order, with a warning in the log.

`select` never raises and never waits longer than three calls of the LLM client
(structured output, tool call, retry), whose own timeouts bound each call. See
docs/orchestrator.md.

The package's modules: `tools` (what the orchestrator may answer), `prompt` (what it is
told), `reading` (how its reply is read, pure) and `selector` (the calls and the ladder).
"""

from engine.orchestrator.selector import Orchestrator

__all__ = ["Orchestrator"]
