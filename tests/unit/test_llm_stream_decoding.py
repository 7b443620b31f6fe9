"""Reply decoding: <think> splitting (whole and incremental), tool-call assembly, SSE lines."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.llm.backend_replies import WireFunction, WireToolCall
from engine.llm.stream import ThinkSplitter, ToolCallAssembler, split_think, sse_data
from engine.llm.types import ToolCall


def feed_in_pieces(text: str, cuts: list[int]) -> tuple[str, str]:
    splitter = ThinkSplitter()
    content, reasoning = [], []
    bounds = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(bounds):
        visible, hidden = splitter.feed(text[start:end])
        content.append(visible)
        reasoning.append(hidden)
    visible, hidden = splitter.flush()
    return "".join(content) + visible, "".join(reasoning) + hidden


@pytest.mark.parametrize(
    ("text", "content", "reasoning"),
    [
        ("plain reply", "plain reply", ""),
        ("<think>plan it</think>\n\nThe answer.", "The answer.", "plan it"),
        ("Before <think>aside</think>after", "Before after", "aside"),
        ("<think>a</think>x<think>b</think>y", "xy", "a\nb"),
        ("<think>never closed", "", "never closed"),
        ("template put the opening tag</think>\nAnswer", "Answer", "template put the opening tag"),
        ("a < b and c <thin ends", "a < b and c <thin ends", ""),
        ("ends with a partial tag <", "ends with a partial tag <", ""),
        ("", "", ""),
    ],
)
def test_split_think_separates_reasoning_from_the_reply(
    text: str, content: str, reasoning: str
) -> None:
    assert split_think(text) == (content, reasoning)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_tags_cut_across_chunks_are_still_recognised(size: int) -> None:
    text = "<think>deep thought</think>Hello there <b>friend</b>"
    cuts = list(range(size, len(text), size))

    content, reasoning = feed_in_pieces(text, cuts)

    assert content == "Hello there <b>friend</b>"
    assert reasoning == "deep thought"


def test_partial_tag_is_held_back_until_decided() -> None:
    splitter = ThinkSplitter()

    assert splitter.feed("Hi <thi") == ("Hi ", "")
    assert splitter.feed("nk>secret</th") == ("", "secret")
    assert splitter.feed("ink> bye") == (" bye", "")


def test_leading_whitespace_is_dropped_only_before_visible_text() -> None:
    splitter = ThinkSplitter()

    assert splitter.feed("<think>x</think>\n\n") == ("", "x")
    assert splitter.feed("  Hello") == ("Hello", "")
    assert splitter.feed("  world") == ("  world", "")


@given(
    st.lists(
        st.sampled_from(["<think>", "</think>", "<", "think", ">", "a", " ", "\n", "</", "b c"]),
        max_size=30,
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_chunking_gives_the_same_split_as_one_chunk(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    whole = feed_in_pieces(text, [])

    assert feed_in_pieces(text, cuts) == whole
    assert "<think>" not in whole[0] and "</think>" not in whole[0]


def test_tool_call_fragments_are_joined_by_index() -> None:
    tools = ToolCallAssembler()
    fragments = [
        WireToolCall(index=0, id="c0", function=WireFunction(name="select_speaker", arguments="")),
        WireToolCall(index=1, id="c1", function=WireFunction(name="hold", arguments="{")),
        WireToolCall(index=0, function=WireFunction(arguments='{"bot_')),
        WireToolCall(index=1, function=WireFunction(arguments="}")),
        WireToolCall(index=0, function=WireFunction(arguments='name": "Bob"}')),
    ]
    for fragment in fragments:
        tools.add(fragment)

    assert tools.calls() == [
        ToolCall(id="c0", name="select_speaker", arguments='{"bot_name": "Bob"}'),
        ToolCall(id="c1", name="hold", arguments="{}"),
    ]


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    tools = ToolCallAssembler()
    tools.add(WireToolCall(id="x", function=WireFunction(name="a", arguments="{")))
    tools.add(WireToolCall(function=WireFunction(arguments="}")))
    tools.add(WireToolCall(id="y", function=WireFunction(name="b", arguments="{}")))

    assert [(c.id, c.name, c.arguments) for c in tools.calls()] == [
        ("x", "a", "{}"),
        ("y", "b", "{}"),
    ]


def test_arguments_sent_as_an_object_become_json_text() -> None:
    tools = ToolCallAssembler()
    tools.add(WireToolCall(index=0, function=WireFunction(name="f", arguments={"k": "v"})))

    assert json.loads(tools.calls()[0].arguments) == {"k": "v"}


def test_a_name_repeated_in_every_delta_is_not_doubled() -> None:
    tools = ToolCallAssembler()
    for piece in ('{"a"', ": 1}"):
        tools.add(WireToolCall(index=0, function=WireFunction(name="f", arguments=piece)))

    assert tools.calls() == [ToolCall(id="", name="f", arguments='{"a": 1}')]


def test_legacy_function_call_is_read_as_a_tool_call() -> None:
    tools = ToolCallAssembler()
    tools.add_legacy("select_speaker", '{"bot_name": "Al')
    tools.add_legacy(None, 'ice"}')

    assert tools.calls() == [
        ToolCall(id="", name="select_speaker", arguments='{"bot_name": "Alice"}')
    ]


@pytest.mark.parametrize(
    ("line", "data"),
    [
        ('data: {"a": 1}', '{"a": 1}'),
        ('data:{"a": 1}', '{"a": 1}'),
        ("data: [DONE]", "[DONE]"),
        (": keep-alive comment", None),
        ("event: message", None),
        ("", None),
    ],
)
def test_sse_data_extracts_only_data_lines(line: str, data: str | None) -> None:
    assert sse_data(line) == data
