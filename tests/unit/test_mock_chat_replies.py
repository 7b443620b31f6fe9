"""The mock's conversational replies (`serve --mock`): varied, addressed, still a mock."""

from __future__ import annotations

import re
from typing import Any

from engine.llm.mock import Fault, MockReply, RecordedRequest
from engine.llm.mock.replies import ReplyBook
from engine.llm.types import ChatMessage
from engine.prompts import PromptParts, system_prompt

DEBATE = (
    'This is a formal debate on the motion "Companies should move to a four-day work week".'
)
CAST = {
    "Priya": "You argue FOR the motion. Lean on productivity studies, wellbeing and hiring.",
    "Marcus": "You argue AGAINST the motion. Stress customer coverage and small businesses.",
    "Chair": "You chair the debate and ask pointed questions.",
}


def request(bot: str, *lines: str, **fields: Any) -> RecordedRequest:
    """The request Fellowship would send for `bot` after `lines` (`Name: text` each)."""
    parts = PromptParts(
        bot_name=bot, bot_system_prompt=CAST[bot], bot_role=None, global_system_prompt=DEBATE
    )
    messages = [ChatMessage(role="system", content=system_prompt(parts))]
    messages.append(ChatMessage(role="user", content="\n".join(lines) or "Let's begin."))
    others = [f"\n{name}:" for name in CAST if name != bot]
    return RecordedRequest(
        index=0, method="POST", path="/v1/chat/completions", headers={}, body={},
        messages=messages, stop=others, **fields,
    )  # fmt: skip


def chat_book() -> ReplyBook:
    return ReplyBook(seed=0, faults=[], retry_after="1", style="chat")


def test_a_reply_answers_the_last_speaker_by_name_without_speaking_for_anyone() -> None:
    said = "Priya: Productivity studies from Iceland show output held steady."
    plan = chat_book().plan(request("Marcus", said), None)
    text = plan.content
    assert "Priya" in text
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert {"productivity", "studies", "iceland", "output", "steady"} & words
    assert not re.search(r"(?m)^\s*\w+:", text)  # never a `Name:` line
    assert "answers" not in text  # not the echo


def test_replies_vary_over_a_conversation_but_repeat_for_the_same_request() -> None:
    book = chat_book()
    lines = [
        "Priya: Productivity studies from Iceland show output held steady.",
        "Marcus: Customers still call on Fridays, and small shops cannot close.",
        "Chair: Marcus, what evidence do you have about small businesses?",
        "Priya: Hiring gets easier when people have three days off.",
    ]
    replies = [book.plan(request("Marcus", *lines[: n + 1]), None).content for n in range(4)]
    assert len(set(replies)) == len(replies)
    again = chat_book().plan(request("Marcus", *lines[:2]), None).content
    assert again == replies[1]


def test_the_first_reply_opens_and_draws_on_the_bots_own_prompt() -> None:
    text = chat_book().plan(request("Priya"), None).content
    assert not text.startswith(("Marcus", "Chair"))
    topic_words = {"formal", "debate", "companies", "four-day", "productivity", "studies",
                   "wellbeing", "hiring"}  # fmt: skip
    assert topic_words & set(re.findall(r"[a-z-]+", text.lower()))


def test_faults_and_scripts_work_as_with_the_echo() -> None:
    book = chat_book()
    said = "Priya: Output held steady."
    prefixed = book.plan(request("Marcus", said), MockReply(fault=Fault.NAME_PREFIX))
    assert prefixed.content.startswith("Priya: ")
    thinking = book.plan(request("Marcus", said), MockReply(fault=Fault.THINK))
    assert thinking.content.startswith("<think>")
    scripted = book.plan(request("Marcus", said), MockReply(content="Exactly this."))
    assert scripted.content == "Exactly this."


def test_the_default_style_is_still_the_documented_echo() -> None:
    book = ReplyBook(seed=0, faults=[], retry_after="1")
    plan = book.plan(request("Marcus", "Priya: Output held steady."), None)
    assert plan.content == "Marcus answers Priya: Output held steady."
