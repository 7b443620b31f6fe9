"""Writes `docs/spec-reference.md` from the models, so the reference cannot drift.

Every field's type, default, allowed values and description come from the generated
JSON Schema; the surrounding prose is kept here. `fellowship schema --write`
regenerates the file and `fellowship schema --check` fails when it is stale.
"""

from __future__ import annotations

from typing import Any, Final

from engine.config import Settings
from engine.spec.checking import NOT_IMPLEMENTED_OPTIONS
from engine.spec.models import BOT_NAME_MAX_CHARS, ORCHESTRATED_MIN_BOTS
from engine.spec.reading import MAX_SPEC_DEPTH
from engine.spec.schema import SCHEMA_FILE_NAME, session_spec_schema

REFERENCE_FILE_NAME: Final = "spec-reference.md"

_TYPE_NAMES = {
    "string": "text",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "mapping",
    "array": "list",
}


def _setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


def render_reference() -> str:
    """The whole Markdown reference, ending in a newline."""
    schema = session_spec_schema()
    defs: dict[str, Any] = schema["$defs"]
    planned = sorted(NOT_IMPLEMENTED_OPTIONS)
    parts = [
        _INTRO.format(
            schema_file=SCHEMA_FILE_NAME,
            max_bytes=_setting_default("max_spec_bytes"),
            max_depth=MAX_SPEC_DEPTH,
            max_chars=_setting_default("max_prompt_chars"),
        ),
        "## Top level\n",
        _table(schema),
        "## Bots (`bots[]`)\n",
        _BOTS.format(
            name_chars=BOT_NAME_MAX_CHARS, max_bots=_setting_default("max_bots_per_session")
        ),
        _table(defs["BotSpec"]),
        "## Options (`options`)\n",
        _OPTIONS.format(min_bots=ORCHESTRATED_MIN_BOTS),
        _table(defs["SessionOptions"]),
        _MEMORY,
        "## Sampling (`sampling`, and per bot)\n",
        _SAMPLING,
        _table(defs["Sampling"]),
        "### Backend options (`sampling.backend_options`, `bots[].backend_options`)\n",
        _BACKEND_OPTIONS,
        _table(defs["BackendOptions"]),
        "## Backend override (`llm`)\n",
        _LLM,
        _table(defs["LLMOverride"]),
    ]
    if planned:
        names = ", ".join(f"`{name}`" for name in planned)
        parts.append(f"## Planned options\n\n{_PLANNED} {names}.\n")
    parts.append(_EXAMPLES)
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def _table(model_schema: dict[str, Any]) -> str:
    required = set(model_schema.get("required", []))
    rows = [
        "| Key | Type | Default | Allowed values | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, prop in model_schema["properties"].items():
        rows.append(
            f"| `{name}` | {_type(prop)} | {_default(prop, name in required)} "
            f"| {_allowed(prop)} | {_cell(prop.get('description', ''))} |"
        )
    return "\n".join(rows) + "\n"


def _variants(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null variant of a property and whether null is accepted."""
    options = prop.get("anyOf")
    if not options:
        return prop, False
    concrete = [option for option in options if option.get("type") != "null"]
    return (concrete[0] if concrete else {}), len(concrete) < len(options)


def _type(prop: dict[str, Any]) -> str:
    inner, nullable = _variants(prop)
    if "$ref" in inner:
        name = "mapping"
    elif inner.get("type") == "array":
        name = "list of mappings" if "$ref" in inner.get("items", {}) else "list"
    else:
        name = _TYPE_NAMES.get(str(inner.get("type")), str(inner.get("type", "any")))
    return f"{name} or null" if nullable else name


def _default(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in prop:
        return "all defaults"
    value = prop["default"]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    return f"`{value}`"


def _allowed(prop: dict[str, Any]) -> str:
    inner, _ = _variants(prop)
    found: list[str] = []
    if "enum" in inner:
        found.append(", ".join(f"`{value}`" for value in inner["enum"]))
    if "const" in inner:
        found.append(f"`{inner['const']}`")
    if "pattern" in prop or "pattern" in inner:
        found.append(", ".join(f"`{value}`" for value in prop.get("examples", [])))
    bounds = (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    )
    found.extend(f"{sign} {inner[key]}" for key, sign in bounds if key in inner)
    if "minLength" in inner or "maxLength" in inner:
        found.append(f"{inner.get('minLength', 0)} to {inner.get('maxLength')} characters")
    if "minItems" in inner:
        found.append(f"at least {inner['minItems']}")
    if inner.get("type") == "boolean":
        found.append("`true`, `false`")
    if "uri" in (prop.get("format"), inner.get("format")):
        found.append("http:// or https:// URL")
    return ", ".join(found) or "—"


def _cell(text: str) -> str:
    # One line, and nothing a Markdown renderer would take for table syntax or HTML.
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


_INTRO = """\
# Session spec reference

<!-- Generated from engine/spec/models.py by `fellowship schema --write`.
     Edit the models, then regenerate; `make check-generated` fails when this is stale. -->

A session spec describes one conversation: the bots that take part, the options that
decide how it runs, and optionally another LLM backend. Send it as the body of
`POST /v1/session/create`, start a named spec from the library, or check a file with
`fellowship validate FILE...`.

Editors can check specs as you type with the JSON Schema in
`specs/{schema_file}`. Make this the first line of a YAML spec that sits in
`specs/`:

```yaml
# yaml-language-server: $schema=./{schema_file}
```

## How a spec is read

- **Format.** JSON for `Content-Type: application/json`; YAML for `application/yaml`,
  `application/x-yaml` or `text/yaml`. Without a known content type, a body that starts
  with `{{` or `[` is read as JSON (falling back to YAML), anything else as YAML.
- **Size.** At most `MAX_SPEC_BYTES` bytes (default {max_bytes}); larger bodies get 413.
- **Safe YAML.** A safe loader builds plain values only. Anchors and aliases (`&`, `*`)
  are refused, which stops "billion laughs" alias bombs; so are a second document
  (`---`), duplicate keys, and nesting deeper than `MAX_SPEC_DEPTH` levels
  ({max_depth}). These, bad UTF-8 and syntax errors are answered with 400 and
  the line and column.
- **Text length.** Every text field (prompts, goal, role, names, URLs) holds at most
  `MAX_PROMPT_CHARS` characters (default {max_chars}).
- **Errors.** Everything wrong with a spec is reported at once (422), each problem with
  its path, such as `bots[1].name: must be unique`, and for YAML its line.
- **Unknown keys.** A key Fellowship does not know, at any depth, is accepted and
  ignored: it is logged as a warning and listed under `warnings` in the response,
  with its path. Specs written for a newer server therefore still load.
- **Small conveniences.** A blank optional text (`role: ""`) counts as unset, and
  surrounding spaces are trimmed from names. Where a number is expected, `true` or
  `false` is refused rather than read as 1 or 0.
"""

_BOTS = """\
Each bot is one LLM participant. Bot names must be unique within the session, ignoring
case (`Alice` and `alice` clash), at most {name_chars} characters, without line breaks.
A session has at least one bot and at most `MAX_BOTS_PER_SESSION` (default {max_bots}).
"""

_OPTIONS = """\
Every option is optional. `turn_order: orchestrated` needs at least {min_bots} bots; with
fewer, the spec is refused with a message that says so.
"""

_MEMORY = """\
### `memory` values

- `none` (default): nothing is carried between sessions.
- `new`: the session writes a memory (a summary of what happened) when it ends or
  summarizes, for later sessions to inherit.
- `inherit:<token>`: the session starts from the memory of the earlier session whose
  token is given, and carries the chain on. The token is a secret: it is never logged,
  and specs shown back by the API replace it with `***`.
"""

_SAMPLING = """\
Sampling settings apply to every bot's replies (never to the orchestrator or to
summaries). Each bot may set `temperature`, `top_p`, `frequency_penalty`,
`presence_penalty`, `seed` and `backend_options` itself; a bot's own value wins, key by
key, over the session's `sampling`. Only values that are set are sent: whatever is left
unset is the backend's own default.

```yaml
sampling:
  top_p: 0.9
  frequency_penalty: 0.4
  seed: 7
  backend_options:
    repeat_penalty: 1.15
bots:
  - name: Alice
    temperature: 0.9
    presence_penalty: 0.3
  - name: Bob
    backend_options:
      dry_multiplier: 0.8
```
"""

_BACKEND_OPTIONS = """\
Settings that only some servers understand, checked here and sent under their own
names: llama.cpp's `llama-server` and llama-cpp-python read every one of them (vLLM
reads `top_k` and `min_p`). OpenAI refuses fields it does not know, so leave
`backend_options` out for OpenAI. See [backends.md](backends.md).
"""

_LLM = """\
By default every call goes to the server's backend (`LLM_BASE_URL`). A session may
name another backend here; the server accepts only hosts listed in `ALLOWED_LLM_HOSTS`.
The API key is never logged and never returned: specs shown back by the API carry
`api_key: null`.

A server may also offer **named backends** (`LLM_BACKENDS`), whose URLs and keys stay
on the server: `llm.backend` sends the whole session to one, a bot's own `backend`
sends that bot's turns to one, and `llm.orchestrator_backend` / `llm.summarizer_backend`
do the same for the orchestrator and for summaries and memory. A name the server does
not have is refused with its path (`bots[1].backend: unknown backend ...`), and the
message lists the names the server has. The most specific choice wins: a bot's
`backend`, then `llm.backend`, then `llm.base_url`, then `LLM_BASE_URL`. Models follow
the same rule: a bot's `model`, the `model` the server gives its named backend,
`llm.model`, the model of `llm.backend`, the server's default. See
[backends.md](backends.md#several-backends-in-one-session).

```yaml
llm:
  orchestrator_backend: vllm
bots:
  - name: Alice
    backend: ollama
    model: llama3.1:8b
  - name: Bob
    backend: vllm
```
"""

_PLANNED = (
    "These options are recognised but not built yet. A spec may set them; the session "
    'is created and the response lists each one as a warning, "not implemented yet":'
)

_EXAMPLES = """\
## Examples

The `specs/` folder holds complete, commented specs, each loadable by name from the
library: `debate` (round-robin debate), `panel` (orchestrated panel with a goal),
`tutor` (reactive tutoring), `writers-room` (collaborative, several humans),
`roleplay` (scoped context) and `long-discussion` (summarizing a long conversation).
"""
