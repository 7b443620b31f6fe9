"""Reply hygiene: whole replies, and the streaming cleaner against them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hygiene import CleanReply, StreamCleaner, clean_reply

OWN = "Alice"
OTHERS = ["Bob", "Al", "Dr. Who", "Dana"]


def clean(text: str, reasoning: str = "") -> CleanReply:
    return clean_reply(text, own_name=OWN, other_names=OTHERS, reasoning=reasoning)


# (raw reply, expected content) — the golden replies, also streamed below.
GOLDEN: list[tuple[str, str]] = [
    ("Espresso, obviously.", "Espresso, obviously."),
    ("  \n Espresso.  \n\n", "Espresso."),
    ("Alice: Espresso.", "Espresso."),
    ("alice:Espresso.", "Espresso."),
    ("**Alice:** Espresso.", "Espresso."),
    ("**Alice**: Espresso.", "Espresso."),
    ("*Alice*: Espresso.", "Espresso."),
    ("__Alice:__ Espresso.", "Espresso."),
    ("Alice: Alice:  ALICE : Espresso.", "Espresso."),
    ("Alice:\n\nEspresso.", "Espresso."),
    ("Alice says: espresso.", "Alice says: espresso."),
    ("Alicegate: a scandal.", "Alicegate: a scandal."),
    ("**Alice:* odd emphasis", "**Alice:* odd emphasis"),
    ("Espresso.\nBob: Tea!", "Espresso."),
    ("Espresso.\n\nBob: Tea!\nAlice: No.", "Espresso."),
    ("Espresso.\n**Bob:** Tea!", "Espresso."),
    ("Espresso.\n  bob : Tea!", "Espresso."),
    ("Espresso.\nDr. Who: Time for tea.", "Espresso."),
    ("Espresso.\nAl: me too", "Espresso."),
    ("Espresso.\nAlbert: not a participant", "Espresso.\nAlbert: not a participant"),
    ("Espresso, Bob: you're wrong.", "Espresso, Bob: you're wrong."),
    ("Ask Bob:\n- why tea?", "Ask Bob:\n- why tea?"),
    ("Bob's view:\nwrong.", "Bob's view:\nwrong."),
    ("Bob: Tea is better.", ""),
    ("Alice: Bob: Tea is better.", ""),
    ("<think>They want coffee.</think>Espresso.", "Espresso."),
    ("<think>\nplan\n</think>\n\nAlice: Espresso.", "Espresso."),
    ("<think>never closed, cut by max_tokens", ""),
    ("Espresso. <think>second thoughts", "Espresso."),
    ("Espresso.<|im_end|>", "Espresso."),
    ("Espresso.<|eot_id|>\n", "Espresso."),
    ("Espresso.</s>", "Espresso."),
    ("Espresso<|end|>.", "Espresso."),
    ("[INST] Espresso. [/INST]", "Espresso."),
    ("<<SYS>>\nbe brief\n<</SYS>>\nEspresso.", "be brief\n\nEspresso."),
    ("a [list] of [INST", "a [list] of [INST"),
    ("a < b and c <thin ice", "a < b and c <thin ice"),
    ("ends with a partial tag <|im_", "ends with a partial tag <|im_"),
    ("Al", "Al"),
    ("Alice", "Alice"),
    ("Alice:", ""),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "expected"), GOLDEN)
def test_golden_replies_clean_to_the_expected_content(raw: str, expected: str) -> None:
    assert clean(raw).content == expected


def test_think_text_is_collected_after_backend_reasoning() -> None:
    reply = clean("<think>a</think>Hi<think>b</think>", reasoning="from backend")

    assert reply.content == "Hi"
    assert reply.reasoning == "from backend\n\na\n\nb"


def test_stray_closing_think_makes_everything_before_it_reasoning() -> None:
    reply = clean("The user asks about coffee.\n</think>\n\nEspresso.")

    assert reply.content == "Espresso."
    assert reply.reasoning == "The user asks about coffee."


def test_flags_report_what_was_repaired() -> None:
    assert clean("Alice: Hi").stripped_prefix is True
    assert clean("Alice: Hi").cut is False
    assert clean("Hi\nBob: yo").cut is True
    assert clean("Hi\nBob: yo").stripped_prefix is False
    assert clean("Hi").model_dump() == {
        "content": "Hi",
        "reasoning": "",
        "cut": False,
        "stripped_prefix": False,
    }


def test_reply_starting_as_someone_else_is_empty_and_cut() -> None:
    reply = clean("Dana: I agree with Alice.\nAlice: Thanks!")

    assert reply.content == ""
    assert reply.cut is True


def test_own_name_listed_among_others_is_still_only_stripped() -> None:
    reply = clean_reply("alice: Hi", own_name="Alice", other_names=["ALICE", "Bob"])

    assert reply.content == "Hi"
    assert reply.cut is False


def test_names_with_regex_characters_are_literal() -> None:
    reply = clean_reply("Hi\nB.b: yo\nBob+: x", own_name="A", other_names=["Bob+"])

    assert reply.content == "Hi\nB.b: yo"


def test_without_other_names_only_the_own_prefix_is_handled() -> None:
    reply = clean_reply("Alice: Hi\nBob: yo", own_name="Alice", other_names=[])

    assert reply.content == "Hi\nBob: yo"


def stream(raw: str, cuts: list[int]) -> str:
    cleaner = StreamCleaner(OWN, OTHERS)
    pieces: list[str] = []
    start = 0
    for end in sorted(set(cuts)):
        pieces.append(cleaner.feed(raw[start:end]))
        start = end
    pieces.append(cleaner.feed(raw[start:]))
    pieces.append(cleaner.finish())
    return "".join(pieces)


@pytest.mark.parametrize(("raw", "expected"), GOLDEN)
def test_streaming_one_character_at_a_time_matches_the_golden_content(
    raw: str, expected: str
) -> None:
    assert stream(raw, list(range(len(raw)))) == expected


@given(data=st.data())
def test_streaming_golden_replies_in_random_chunks_matches_clean_reply(
    data: st.DataObject,
) -> None:
    raw, _ = data.draw(st.sampled_from(GOLDEN))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=len(raw)))

    assert stream(raw, cuts) == clean(raw).content


# Pieces that combine into prefixes, impersonations, tags split across chunks and
# artefacts. None can form a stray `</think>` (the one documented difference).
PIECES = [
    "Alice",
    "alice",
    "Bob",
    "Al",
    "Dr. Who",
    "Dana",
    ":",
    ": ",
    "**",
    "*",
    "_",
    " ",
    "\t",
    "\n",
    "\n\n",
    "hi",
    "there.",
    "tea",
    "é",
    "<think>",
    "<think>plan</think>",
    "<thi",
    "nk>",
    "<|im_",
    "end|>",
    "</s>",
    "<",
    "<|end|>",
]


@given(
    pieces=st.lists(st.sampled_from(PIECES), max_size=25),
    data=st.data(),
)
def test_streaming_any_reply_in_any_chunks_matches_clean_reply(
    pieces: list[str], data: st.DataObject
) -> None:
    raw = "".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=len(raw)))

    assert stream(raw, cuts) == clean(raw).content


def test_stream_holds_back_a_possible_impersonation_until_it_is_decided() -> None:
    cleaner = StreamCleaner(OWN, OTHERS)

    assert cleaner.feed("Sure.\nBo") == "Sure."
    assert cleaner.feed("b") == ""
    assert cleaner.feed(": tea") == ""
    assert cleaner.cut is True
    assert cleaner.feed(" more") == ""
    assert cleaner.finish() == ""


def test_stream_releases_a_line_once_it_cannot_be_a_name() -> None:
    cleaner = StreamCleaner(OWN, OTHERS)

    assert cleaner.feed("Sure.\nBo") == "Sure."
    assert cleaner.feed("th of us") == "\nBoth of us"
    assert cleaner.finish() == ""
    assert cleaner.cut is False


def test_stream_hides_think_text_and_own_prefix() -> None:
    cleaner = StreamCleaner(OWN, OTHERS)

    shown = [cleaner.feed(delta) for delta in ["<thi", "nk>hmm</th", "ink>Ali", "ce: Hi", "!"]]

    assert shown == ["", "", "", "Hi", "!"]
    assert cleaner.finish() == ""


def test_stray_closing_think_cannot_be_taken_back_when_streaming() -> None:
    raw = "reasoning</think>Espresso."

    assert clean(raw).content == "Espresso."
    assert stream(raw, [5]) == "reasoningEspresso."
