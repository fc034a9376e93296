from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from app.agents.history import TRUNCATION_MARK, model_window, storage_overflow, turn_start


def turns(n: int) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for i in range(n):
        out += [HumanMessage(f"q{i}", id=f"h{i}"), AIMessage(f"a{i}", id=f"a{i}")]
    return out


def tool_turn(i: int) -> list[BaseMessage]:
    call = {"name": "calculator", "args": {}, "id": f"c{i}"}
    return [
        HumanMessage(f"tool q{i}", id=f"th{i}"),
        AIMessage("", tool_calls=[call], id=f"ta{i}"),
        ToolMessage("42", tool_call_id=f"c{i}", id=f"tt{i}"),
        AIMessage(f"answer {i}", id=f"tf{i}"),
    ]


def test_short_history_is_untouched() -> None:
    messages = turns(3)
    assert turn_start(messages, 10) == 0
    assert storage_overflow(messages, 6) == []
    assert model_window(messages, 6, 100) == messages


def test_cut_moves_forward_to_a_user_message() -> None:
    messages = turns(5)  # 10 messages
    start = turn_start(messages, 5)  # plain cut at 5 is an AI message
    assert isinstance(messages[start], HumanMessage)
    assert start == 6


def test_tool_results_never_lose_their_call() -> None:
    messages = turns(2) + tool_turn(0) + turns(1)
    for keep in range(1, len(messages) + 1):
        window = model_window(messages, keep, 100)
        ids = {m.id for m in window}
        for message in window:
            if isinstance(message, ToolMessage):
                assert "ta0" in ids
        assert window[0].type == "human"


def test_current_turn_is_kept_whole_even_above_the_cap() -> None:
    messages = turns(2) + tool_turn(1)
    window = model_window(messages, 2, 100)
    assert [m.id for m in window] == ["th1", "ta1", "tt1", "tf1"]


def test_storage_overflow_drops_oldest_whole_turns() -> None:
    messages = turns(10)
    dropped = storage_overflow(messages, 7)
    assert [m.id for m in dropped] == [f"{p}{i}" for i in range(7) for p in "ha"]
    kept = messages[len(dropped):]
    assert [m.id for m in kept] == ["h7", "a7", "h8", "a8", "h9", "a9"]


def test_old_long_messages_are_truncated_for_the_model_only() -> None:
    long = "x" * 500
    messages = [HumanMessage(long, id="h0"), AIMessage(long, id="a0"),
                HumanMessage(long, id="h1")]
    window = model_window(messages, 10, 100)
    assert window[0].content == "x" * 100 + TRUNCATION_MARK
    assert window[1].content == "x" * 100 + TRUNCATION_MARK
    assert window[2].content == long  # the newest user message reaches the model whole
    assert messages[0].content == long  # stored history is not modified
