"""Transcripts: a session's conversation as a document to keep or share.

Pure functions over a spec and a history. `build_transcript` gathers what a transcript
shows — the spec's name, its bots (name, role, model; never a system prompt, since an
observer token suffices to export), and every position with its speaker, time and
status — into a `Transcript` model; `render_transcript` writes it out as:

- `json`: the `Transcript` model itself;
- `markdown`: a heading per position, each message quoted so that nothing in it can
  break the layout around it (the text itself is left as written: it is usually
  Markdown already);
- `html`: one standalone page — inline CSS only, no script, no external resource (a
  Content-Security-Policy says so to the browser too), every piece of text escaped.

Failed turns (tombstones) are marked as such, and a reply still being written when the
transcript was made is marked as unfinished.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

from pydantic import BaseModel, Field

from engine.errors import UnknownFormat
from engine.history import Message, MessageKind, MessageStatus
from engine.spec.models import SessionSpec

TranscriptFormat = Literal["markdown", "json", "html"]
TRANSCRIPT_FORMATS: Final[tuple[str, ...]] = get_args(TranscriptFormat)
DEFAULT_FORMAT: Final[TranscriptFormat] = "markdown"
_BY_NAME: Final[dict[str, TranscriptFormat]] = {
    "markdown": "markdown",
    "json": "json",
    "html": "html",
}

MEDIA_TYPES: Final[dict[TranscriptFormat, str]] = {
    "markdown": "text/markdown; charset=utf-8",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
}
EXTENSIONS: Final[dict[TranscriptFormat, str]] = {"markdown": "md", "json": "json", "html": "html"}
HTML_POLICY: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)
"""What the HTML page may load: its own inline style, nothing else."""

FILENAME_STEM_MAX: Final = 40
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S UTC"
# Well-separated hues for the bots, in spec order (as the console does, by first turn).
_BOT_HUES: Final = (265, 140, 25, 330, 180, 50, 0, 210)
_TALKER_HUE: Final = 220
# What could turn a name into markup where the transcript puts names: mid-line, in a
# heading or a list item (so `(`, `.`, `-` and `+` need no escape there).
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~&])")


class TranscriptBot(BaseModel):
    """A bot of the session, as the transcript introduces it."""

    name: str = Field(description="The bot's name, as it appears on its messages.")
    role: str | None = Field(None, description="The spec's role hint for the bot, if any.")
    model: str | None = Field(None, description="The model the spec names for this bot, if any.")


class TranscriptMessage(BaseModel):
    """One history position in a transcript."""

    turn: int = Field(ge=1, description="History position, 1-based, gapless.")
    kind: MessageKind = Field(description="'bot' or 'talker'.")
    speaker: str = Field(description="Bot name or the talker's display name.")
    status: MessageStatus = Field(
        description="complete; failed (a tombstone: the turn produced no reply); reserved "
        "(a reply still being written when the transcript was made)."
    )
    content: str = Field(description="Message text (empty for failed and reserved positions).")
    ts: datetime = Field(description="When the position was taken (UTC).")


class Transcript(BaseModel):
    """A session's conversation as `GET /v1/session/{token}/transcript?format=json` gives it."""

    session_id: str = Field(description="Public session id.")
    name: str | None = Field(None, description="The spec's name, if it has one.")
    state: str = Field(description="The session's state when exported: active, paused or ended.")
    created_at: datetime = Field(description="When the session was created (UTC).")
    ended_at: datetime | None = Field(None, description="When it ended, if it did (UTC).")
    end_reason: str | None = Field(None, description="Why it ended, if it did.")
    exported_at: datetime = Field(description="When this transcript was made (UTC).")
    bots: list[TranscriptBot] = Field(description="The bots, in spec order.")
    messages: list[TranscriptMessage] = Field(
        description="Every history position in order, tombstones and a reply being written "
        "included."
    )


@dataclass(frozen=True, slots=True)
class TranscriptInfo:
    """What a transcript says about its session besides the spec and history."""

    session_id: str
    state: str
    created_at: datetime
    exported_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedTranscript:
    """A transcript written out: its text, media type and file name."""

    body: str
    media_type: str
    filename: str

    @property
    def content_disposition(self) -> str:
        """The `Content-Disposition` header that offers it as a download."""
        # The name is made of [a-z0-9.-] only (see `transcript_filename`): no quoting needed.
        return f'attachment; filename="{self.filename}"'


def transcript_format(value: str | None) -> TranscriptFormat:
    """The format asked for (`markdown` when none); `UnknownFormat` for any other."""
    if value is None or value == "":
        return DEFAULT_FORMAT
    chosen = _BY_NAME.get(value)
    if chosen is None:
        raise UnknownFormat(
            f"unknown transcript format; use one of {', '.join(TRANSCRIPT_FORMATS)}"
        )
    return chosen


def build_transcript(
    spec: SessionSpec, messages: Sequence[Message], info: TranscriptInfo
) -> Transcript:
    """The transcript of a session with this spec and history."""
    return Transcript(
        session_id=info.session_id,
        name=spec.name,
        state=info.state,
        created_at=info.created_at,
        ended_at=info.ended_at,
        end_reason=info.end_reason,
        exported_at=info.exported_at,
        bots=[TranscriptBot(name=b.name, role=b.role, model=b.model) for b in spec.bots],
        messages=[
            TranscriptMessage(
                turn=m.turn,
                kind=m.kind,
                speaker=m.speaker,
                status=m.status,
                content=m.content if m.status == "complete" else "",
                ts=m.ts,
            )
            for m in messages
        ],
    )


def render_transcript(transcript: Transcript, format: TranscriptFormat) -> RenderedTranscript:
    """`transcript` written in `format`, with its media type and file name."""
    writers = {"markdown": render_markdown, "json": render_json, "html": render_html}
    return RenderedTranscript(
        body=writers[format](transcript),
        media_type=MEDIA_TYPES[format],
        filename=transcript_filename(transcript, format),
    )


def transcript_filename(transcript: Transcript, format: TranscriptFormat) -> str:
    """`<name as a slug>-<session id>.<ext>`, e.g. `coffee-debate-481d3ac7.md`."""
    stem = _NOT_SLUG.sub("-", (transcript.name or "").lower()).strip("-")[:FILENAME_STEM_MAX]
    session = _NOT_SLUG.sub("", transcript.session_id.lower())
    return f"{stem.strip('-') or 'session'}-{session}.{EXTENSIONS[format]}"


def render_json(transcript: Transcript) -> str:
    """The `Transcript` model as JSON."""
    return transcript.model_dump_json(indent=2) + "\n"


# --- markdown ------------------------------------------------------------------------------


def render_markdown(transcript: Transcript) -> str:
    """A Markdown document: a header, then a section per position."""
    title = _md(transcript.name or "Fellowship session")
    lines = [
        f"# {title}",
        "",
        f"- **Session:** `{transcript.session_id}`",
        f"- **State:** {_state_text(transcript)}",
        f"- **Created:** {_time(transcript.created_at)}",
        f"- **Exported:** {_time(transcript.exported_at)}",
        f"- **Bots:** {', '.join(_md(_bot_label(bot)) for bot in transcript.bots)}",
        "",
        "---",
    ]
    if not transcript.messages:
        lines += ["", "*No messages yet.*"]
    for message in transcript.messages:
        heading = f"{message.turn} · {_md(message.speaker)}"
        if message.kind == "talker":
            heading += " (talker)"
        lines += ["", f"### {heading}", "", f"*{_time(message.ts)}*", ""]
        if message.status == "failed":
            lines.append("> *Failed turn (tombstone): no reply was recorded.*")
        elif message.status == "reserved":
            lines.append("> *Still being written when this transcript was made.*")
        else:
            lines += [f"> {line}".rstrip() for line in message.content.split("\n")]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """`text` with Markdown's special characters escaped, on one line."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(text.split()))


# --- html ----------------------------------------------------------------------------------

_HTML_STYLE: Final = """
:root { color-scheme: light dark; --bg: #fbfbfa; --fg: #1d1d1f; --muted: #6b6b70;
  --card: #ffffff; --line: #e3e3e0; }
@media (prefers-color-scheme: dark) { :root { --bg: #18181a; --fg: #ececef;
  --muted: #a0a0a8; --card: #222226; --line: #35353a; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 46rem; margin: 0 auto; padding: 2rem 1rem 4rem; }
h1 { font-size: 1.6rem; margin: 0 0 .75rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem;
  margin: 0 0 2rem; color: var(--muted); font-size: .9rem; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
ol.messages { list-style: none; margin: 0; padding: 0; }
li.msg { background: var(--card); border: 1px solid var(--line);
  border-left: 4px solid hsl(var(--hue) 60% 50%); border-radius: 8px;
  padding: .6rem .9rem; margin: 0 0 .75rem; }
li.msg.talker { margin-left: 2.5rem; }
li.msg.failed, li.msg.reserved { border-style: dashed; opacity: .8; }
.msg-head { display: flex; flex-wrap: wrap; gap: .25rem .6rem; align-items: baseline;
  font-size: .85rem; color: var(--muted); }
.msg-head .turn { font-variant-numeric: tabular-nums; }
.msg-head .speaker { font-weight: 700; color: hsl(var(--hue) 55% 42%); font-size: .95rem; }
@media (prefers-color-scheme: dark) { .msg-head .speaker { color: hsl(var(--hue) 70% 70%); } }
.msg-head .tag { border: 1px solid var(--line); border-radius: 999px; padding: 0 .45rem; }
.msg-body { margin: .3rem 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.msg-body.note { font-style: italic; color: var(--muted); }
footer { margin-top: 2rem; color: var(--muted); font-size: .8rem; }
"""


def render_html(transcript: Transcript) -> str:
    """A standalone HTML page: inline CSS, no script, no external resource, all escaped."""
    hues = {
        bot.name.casefold(): _BOT_HUES[i % len(_BOT_HUES)] for i, bot in enumerate(transcript.bots)
    }
    title = transcript.name or "Fellowship session"
    meta = [
        ("Session", transcript.session_id),
        ("State", _state_text(transcript)),
        ("Created", _time(transcript.created_at)),
        ("Bots", ", ".join(_bot_label(bot) for bot in transcript.bots)),
    ]
    meta_rows = "\n".join(f"<dt>{_h(label)}</dt><dd>{_h(value)}</dd>" for label, value in meta)
    items = "\n".join(_html_message(m, hues) for m in transcript.messages)
    if not transcript.messages:
        items = '<li class="msg note"><p class="msg-body note">No messages yet.</p></li>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_h(HTML_POLICY)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_h(title)} — transcript</title>
<style>{_HTML_STYLE}</style>
</head>
<body>
<main>
<h1>{_h(title)}</h1>
<dl class="meta">
{meta_rows}
</dl>
<ol class="messages">
{items}
</ol>
<footer>Exported from Fellowship on {_h(_time(transcript.exported_at))}.</footer>
</main>
</body>
</html>
"""


def _html_message(message: TranscriptMessage, hues: dict[str, int]) -> str:
    hue = hues.get(message.speaker.casefold(), _TALKER_HUE)
    tags = []
    if message.kind == "talker":
        tags.append("talker")
    if message.status == "failed":
        tags.append("failed turn")
    elif message.status == "reserved":
        tags.append("unfinished")
    tag_html = "".join(f' <span class="tag">{_h(tag)}</span>' for tag in tags)
    if message.status == "failed":
        body = '<p class="msg-body note">No reply was recorded: this turn failed (tombstone).</p>'
    elif message.status == "reserved":
        body = '<p class="msg-body note">Still being written when this transcript was made.</p>'
    else:
        body = f'<p class="msg-body">{_h(message.content)}</p>'
    classes = f"msg {message.kind} {message.status}"
    return (
        f'<li class="{classes}" id="turn-{message.turn}" style="--hue: {hue}">'
        f'<div class="msg-head"><span class="turn">#{message.turn}</span> '
        f'<span class="speaker">{_h(message.speaker)}</span>{tag_html} '
        f'<time datetime="{_h(message.ts.isoformat())}">{_h(_time(message.ts))}</time></div>'
        f"{body}</li>"
    )


def _h(text: str) -> str:
    return html.escape(text, quote=True)


# --- shared --------------------------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.strftime(_TIME_FORMAT)


def _bot_label(bot: TranscriptBot) -> str:
    details = [part for part in (bot.role, bot.model) if part]
    return f"{bot.name} ({', '.join(details)})" if details else bot.name


def _state_text(transcript: Transcript) -> str:
    if transcript.state != "ended":
        return transcript.state
    text = "ended"
    if transcript.end_reason:
        text += f" ({transcript.end_reason})"
    if transcript.ended_at is not None:
        text += f" at {_time(transcript.ended_at)}"
    return text
