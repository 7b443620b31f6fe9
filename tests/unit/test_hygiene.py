"""Reply hygiene: whole replies, and the streaming cleaner against them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.history import Message
from engine.hygiene import (
    CleanReply,
    StreamCleaner,
    clean_reply,
    collapse_repeats,
    find_repeat,
    recitals_of,
)

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
    ("alicegate: a scandal.", "alicegate: a scandal."),
    ("**Alice:* odd emphasis", "**Alice:* odd emphasis"),
    ("Espresso.\nBob: Tea!", "Espresso."),
    ("Espresso.\n\nBob: Tea!\nAlice: No.", "Espresso."),
    ("Espresso.\n**Bob:** Tea!", "Espresso."),
    ("Espresso.\n  bob : Tea!", "Espresso."),
    ("Espresso.\nDr. Who: Time for tea.", "Espresso."),
    ("Espresso.\nAl: me too", "Espresso."),
    ("Espresso.\nAlbert: not a participant", "Espresso."),
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
    # Anyone's `Name:` turn, not only a participant's; not labels or lower-case words.
    ("Dave: I disagree.", ""),
    ("Espresso.\nDave: I disagree.", "Espresso."),
    ("Espresso.\n**Dave Smith:** Tea!", "Espresso."),
    ("Espresso.\nAlicegate: a scandal.", "Espresso."),
    ("Note: bring bread.", "Note: bring bread."),
    ("Espresso.\nStep 1: grind the beans.", "Espresso.\nStep 1: grind the beans."),
    ("Espresso.\nFun fact: it is strong.", "Espresso.\nFun fact: it is strong."),
    ("I agree: espresso.", "I agree: espresso."),
    ("Espresso.\nThe verdict: espresso.", "Espresso.\nThe verdict: espresso."),
    ("Espresso.\nIngredients:\n- beans", "Espresso.\nIngredients:\n- beans"),
    ("Espresso.\nAlice: and more.", "Espresso.\nAlice: and more."),
    # Role words left by template markers, and roles as speakers.
    ("model\nmodel\n\n\nWhat is bread?", "What is bread?"),
    (
        "<start_of_turn>model\n<start_of_turn>model\n<end_of_turn>\n\nWhat is bread?",
        "What is bread?",
    ),
    ("<|im_start|>assistant\nEspresso.", "Espresso."),
    ("<|start_header_id|>assistant<|end_header_id|>\n\nEspresso.", "Espresso."),
    ("Espresso.<|im_end|><|im_start|>user\nAnd tea?", "Espresso."),
    ("Espresso.<end_of_turn>\n<start_of_turn>user\nAnd tea?", "Espresso."),
    ("Espresso.\nuser\nAnd tea?", "Espresso."),
    ("Assistant: Espresso.", "Espresso."),
    ("**Model:** Espresso.", "Espresso."),
    ("User: And tea?", ""),
    ("Espresso.\nHuman: And tea?", "Espresso."),
    ("Users love espresso.", "Users love espresso."),
    ("model trains run on time.", "model trains run on time."),
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
        "live": "Hi",
        "role_lines": 0,
        "recited": [],
        "repeated_sentences": 0,
        "trimmed": "",
    }
    assert clean("model\nuser\nHi").role_lines == 2
    assert clean("model\nAlice: Hi\nDave: yo").rules == ["role_lines", "own_prefix", "speaker_cut"]


def test_reply_starting_as_someone_else_is_empty_and_cut() -> None:
    reply = clean("Dana: I agree with Alice.\nAlice: Thanks!")

    assert reply.content == ""
    assert reply.cut is True


def test_own_name_listed_among_others_is_still_only_stripped() -> None:
    reply = clean_reply("alice: Hi", own_name="Alice", other_names=["ALICE", "Bob"])

    assert reply.content == "Hi"
    assert reply.cut is False


def test_names_with_regex_characters_are_literal() -> None:
    reply = clean_reply("Hi\nb.b: yo\nbob+: x", own_name="A", other_names=["Bob+"])

    assert reply.content == "Hi\nb.b: yo"


def test_without_other_names_an_unlisted_speaker_is_still_cut() -> None:
    reply = clean_reply("Alice: Hi\nBob: yo\nbob: yo", own_name="Alice", other_names=[])

    assert reply.content == "Hi"
    assert (reply.stripped_prefix, reply.cut) == (True, True)


def test_an_unlisted_lower_case_name_is_not_a_speaker() -> None:
    reply = clean_reply("Hi\nbob: yo", own_name="Alice", other_names=[])

    assert reply.content == "Hi\nbob: yo"


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

    assert stream(raw, cuts) == clean(raw).live


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
    "Dave",
    "Note",
    "Tea",
    "Fun fact",
    "model",
    "user",
    "Assistant",
    "<|im_start|>",
    "<start_of_turn>",
    "R2",
    "1",
    ",",
    "'",
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

    assert stream(raw, cuts) == clean(raw).live


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

    # "Hi" could still become a speaker's name ("Hi Bob: ...") until "!" rules it out.
    assert shown == ["", "", "", "", "Hi!"]
    assert cleaner.finish() == ""


def test_stray_closing_think_cannot_be_taken_back_when_streaming() -> None:
    raw = "reasoning</think>Espresso."

    assert clean(raw).content == "Espresso."
    assert stream(raw, [5]) == "reasoningEspresso."


# --- whole-reply rules --------------------------------------------------------------------------

# The system messages of a three-bot session, as engine.prompts writes them.
PROMPTS = (
    "Three neighbours chat about their weekend. Reply in one or two short sentences.\n\n"
    "You are Alice. Reply as Alice only, in your own voice, without a name prefix.\n\n"
    "You are Alice, a cheerful baker who loves bread and mornings.",
    "Three neighbours chat about their weekend. Reply in one or two short sentences.\n\n"
    "You are Bob. Reply as Bob only, in your own voice, without a name prefix.\n\n"
    "You are Bob, a fisherman who prefers the sea to small talk.",
)
RECITALS = recitals_of(PROMPTS, similarity=0.8, min_words=3)


def clean_with(raw: str, *, cut_short: bool = False) -> CleanReply:
    return clean_reply(
        raw, own_name="Bob", other_names=["Alice"], recitals=RECITALS, cut_short=cut_short
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # The llama2 run of issue 21: Bob's reply opened with Alice's identity line.
        (
            "You are Alice. Reply as Alice only, in your own voice, without a name prefix.\n"
            "The sea was calm this morning.",
            "The sea was calm this morning.",
        ),
        # A persona line, the bot's own or another's, nearly word for word.
        (
            "I am Bob, a fisherman who prefers the sea to small talk.\nNets to mend.",
            "Nets to mend.",
        ),
        (
            "You are Alice, a cheerful baker who loves bread.\nBob: Bread again?",
            "Bread again?",
        ),
        ("Reply in one or two short sentences.\n\nYou are Bob.\nFish!", "Fish!"),
        # Only leading lines, and only near-copies.
        ("Fish!\nYou are Alice.", "Fish!\nYou are Alice."),
        ("You are right, Alice.\nFish!", "You are right, Alice.\nFish!"),
        ("I love the sea and small boats.", "I love the sea and small boats."),
        ("You are Alice.", ""),
    ],
)
def test_a_leading_line_reciting_a_system_prompt_is_dropped(raw: str, expected: str) -> None:
    reply = clean_with(raw)
    assert reply.content == expected
    assert bool(reply.recited) == (expected != raw)


def test_recitals_are_kept_for_debug_and_not_in_the_live_text_rules() -> None:
    reply = clean_with("You are Bob.\nFish!")
    assert reply.recited == ["You are Bob."]
    assert reply.live == "You are Bob.\nFish!"
    assert reply.rules == ["recital"]


@pytest.mark.parametrize(
    ("raw", "expected", "removed"),
    [
        (
            "You've done it all. You've done it all. You've done it all. You've done it all.",
            "You've done it all.",
            3,
        ),
        ("Fish! Fish! Fish?", "Fish!", 2),
        ("Nice day. The sea is calm. nice day!", "Nice day. The sea is calm.", 1),
        ("Line one.\nLine two.\nLine one.", "Line one.\nLine two.", 1),
        ("A calm sea. A calm sea is rare.", "A calm sea. A calm sea is rare.", 0),
        ("No punctuation here", "No punctuation here", 0),
    ],
)
def test_a_sentence_repeated_in_one_reply_is_kept_once(
    raw: str, expected: str, removed: int
) -> None:
    assert collapse_repeats(raw) == (expected if removed else raw, removed)
    assert clean_with(raw).content == expected
    assert clean_with(raw).repeated_sentences == removed


@pytest.mark.parametrize(
    ("raw", "expected", "trimmed"),
    [
        ("The sea is calm. We could sail to the", "The sea is calm.", "We could sail to the"),
        ('She said "go!" and then we', 'She said "go!"', "and then we"),
        ("Fish? Yes. Maybe tomorrow we", "Fish? Yes.", "Maybe tomorrow we"),
        ("No sentence end at all", "No sentence end at all", ""),
        ("Ends well.", "Ends well.", ""),
        ("Version 2.5 is out and", "Version 2.5 is out and", ""),
    ],
)
def test_a_reply_cut_by_max_tokens_ends_at_its_last_whole_sentence(
    raw: str, expected: str, trimmed: str
) -> None:
    reply = clean_with(raw, cut_short=True)
    assert (reply.content, reply.trimmed) == (expected, trimmed)
    assert clean_with(raw).content == raw  # only replies the backend cut short


def test_a_reply_cut_at_another_speaker_is_not_trimmed_further() -> None:
    reply = clean_with("The sea is calm. We could\nAlice: Bread!", cut_short=True)
    assert (reply.content, reply.trimmed) == ("The sea is calm. We could", "")


def message(turn: int, speaker: str, content: str) -> Message:
    return Message(turn=turn, kind="bot", speaker=speaker, content=content, ts=NOW, tokens=1)


NOW = datetime(2026, 1, 1, tzinfo=UTC)
RECENT = [
    message(1, "Alice", "You've done it all."),
    message(2, "Bob", "The sea was calm this morning, perfect for fishing."),
    message(3, "Carol", "What will you all do on Sunday?"),
]


@pytest.mark.parametrize(
    ("content", "turn"),
    [
        ("You've done it all.", 1),
        ("you've done it all!", 1),
        ("The sea was calm this morning, so perfect for fishing.", 2),
        ("What will you all do on Sunday?", 3),
        ("What will you do on Saturday, Carol?", None),
        ("The sea was rough.", None),
        ("", None),
    ],
)
def test_a_reply_repeating_a_recent_message_is_found(content: str, turn: int | None) -> None:
    found = find_repeat(content, RECENT, 0.9)
    assert (found.turn if found else None) == turn
