"""The mock's conversational replies, for demos (`fellowship serve --mock`).

Still no model: a reply is put together from a few sentence patterns, filled with the
names and words the request carries, so that a demo reads like people talking instead
of an echo. A reply has three parts:

- an opener that answers the last speaker by name and picks up a word of what they said
  (or opens the conversation, or goes on from the bot's own last words);
- a middle that brings in a word of the bot's own prompt (its topic, its side), or its
  role (`Your role: critic.`);
- sometimes a closer that hands over to another participant (named in the request's
  `\\nName:` stop sequences) or asks a question.

The choice is seeded by the request itself (bot, length of the conversation, last
message), so the same request always gets the same reply and a conversation varies from
turn to turn. Topic words come only from the request (lower-cased).
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Final

from engine.llm.mock.models import RecordedRequest

MIN_WORD_CHARS: Final = 5
"""Shorter words are mostly glue; a topic word is at least this long."""

_WORD = re.compile(rf"\b[A-Za-z][A-Za-z-]{{{MIN_WORD_CHARS - 1},}}\b(?!')")
_IDENTITY = re.compile(r"You are [^\n]*?without a name prefix\.")
_AS_ROLE = re.compile(r"\b[Aa]s the \w+")
_ROLE = re.compile(r"Your role: ([^.\n]+)\.")
_STOP_NAME = re.compile(r"^\n?([^:\n]+):$")

# Frequent long words that say nothing about a topic, and the words of Fellowship's own
# prompt scaffolding ("Reply as X only, in your own voice, without a name prefix.").
_PLAIN_WORDS: Final = frozenset(
    {
        "about", "above", "after", "again", "against", "always", "among", "another", "answer",
        "anything", "argue", "around", "because", "before", "begin", "being", "below", "between",
        "brief", "concede", "could", "continue", "doing", "during", "every", "first", "going",
        "having", "headings", "keeping", "lists", "makes", "maybe", "might", "motion", "names",
        "never", "other", "others", "panel", "people", "person", "please", "points", "prefix",
        "previous", "really", "reply", "replies", "round", "rounds", "sentence", "sentences",
        "shall", "short", "should", "since", "small", "someone", "something", "speak", "speaker",
        "speaking", "still", "taking", "talking", "their", "there", "these", "thing", "things",
        "think", "those", "though", "three", "through", "under", "until", "voice", "where",
        "whether", "which", "while", "within", "without", "words", "would", "yours", "yourself",
    }
)

_OPENERS: Final = (
    "{speaker}, you make a fair point about {their}.",
    "I hear you, {speaker}, but I'm not convinced about {their}.",
    "That's an interesting take on {their}, {speaker}.",
    "Hold on, {speaker}: {their} is only half the story.",
    "Agreed, {speaker}, at least as far as {their} goes.",
    "Hmm. {speaker}, I see {their} quite differently.",
    "Thanks, {speaker}. Let me push back a little on {their}.",
)
_FIRST_OPENERS: Final = (
    "Let me get us started.",
    "Happy to open.",
    "Here is how I see it.",
    "Right, where do we begin?",
)
_FOLLOW_UPS: Final = (
    "One more thing.",
    "Let me build on that.",
    "To add to what I just said:",
)
_MIDDLES: Final = (
    "For me it comes down to {mine}.",
    "What matters most to me is {mine}, and we keep skipping past it.",
    "If we get {mine} right, {their} tends to follow.",
    "Think about {mine} for a moment: it changes the whole picture.",
    "My worry is that we talk about {their} and forget {mine}.",
    "I keep coming back to {mine}.",
)
_ROLE_MIDDLES: Final = (
    "Speaking as the {role}, I'd put {mine} first.",
    "As the {role} here, I have to ask what {mine} really costs us.",
)
_CLOSERS: Final = (
    "{other}, where do you stand on this?",
    "What would change your mind?",
    "Can we at least agree on that much?",
    "{other}, does that sound fair to you?",
    "I'd like to hear a concrete example.",
    "",
    "",
)
_NEUTRAL: Final = "this"
_ADVERB_END: Final = "ly"
_TEMPLATE_WORDS: Final = frozenset(
    word.casefold()
    for text in (*_OPENERS, *_FIRST_OPENERS, *_FOLLOW_UPS, *_MIDDLES, *_ROLE_MIDDLES, *_CLOSERS)
    for word in re.findall(r"[A-Za-z]+", text)
)
"""The patterns' own words: picking them up from an earlier reply would echo the mock."""
"""What `{their}` or `{mine}` becomes when the request offers no topic word at all."""


def chat_text(request: RecordedRequest, name: str, speaker: str | None, said: str) -> str:
    """A conversational reply by `name` to `speaker` (None: nobody spoke yet), who `said`."""
    rng = random.Random(_seed(request, name))
    system = _IDENTITY.sub("", request.system_prompt)
    others = [n for n in _stop_names(request.stop) if n != name]
    exclude = {n.casefold() for n in [name, *others, *([speaker] if speaker else [])]}
    mine = _topic(system, rng, exclude)
    # "Speaking as the critic": another bot's role is not what it talks about.
    their = _topic(_AS_ROLE.sub("", said), rng, exclude) or mine
    mine = mine or their or _NEUTRAL
    their = their or _NEUTRAL
    role = _ROLE.search(request.system_prompt)
    other = rng.choice([n for n in others if n != speaker] or others or [speaker or _NEUTRAL])
    if speaker:
        opener = rng.choice(_OPENERS).format(speaker=speaker, their=their)
    else:
        spoke = any(message.role == "assistant" for message in request.messages)
        opener = rng.choice(_FOLLOW_UPS if spoke else _FIRST_OPENERS)
    middles = list(_MIDDLES) + (list(_ROLE_MIDDLES) if role else [])
    middle = rng.choice(middles).format(
        mine=mine, their=their, role=role.group(1).strip() if role else ""
    )
    closer = rng.choice(_CLOSERS).format(other=other) if others else ""
    return " ".join(part for part in (opener, middle, closer) if part)


def _seed(request: RecordedRequest, name: str) -> int:
    # crc32, not hash(): the same request must get the same reply in every process.
    key = f"{name}\x00{len(request.messages)}\x00{request.last_user_message}"
    return zlib.crc32(key.encode("utf-8"))


def _stop_names(stops: list[str]) -> list[str]:
    """Participant names from `\\nName:` stop sequences, in order."""
    names = []
    for stop in stops:
        match = _STOP_NAME.match(stop)
        if match and match.group(1).strip():
            names.append(match.group(1).strip())
    return names


def _topic(text: str, rng: random.Random, exclude: set[str]) -> str | None:
    """One topic word of `text`, lower-cased, or None when it has none."""
    words = []
    for word in _WORD.findall(text):
        folded = word.strip("-").casefold()
        if (
            len(folded) >= MIN_WORD_CHARS
            and not folded.endswith(_ADVERB_END)
            and folded not in _PLAIN_WORDS | _TEMPLATE_WORDS | exclude
        ):
            words.append(folded)
    if not words:
        return None
    # Long words tend to carry the topic ("productivity"), short ones less so ("later").
    weights = [(len(word) - MIN_WORD_CHARS + 1) ** 2 for word in words]
    chosen: str = rng.choices(words, weights=weights)[0]
    return chosen
