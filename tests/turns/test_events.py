"""Turn events read off the messages a turn produces."""

from __future__ import annotations

from langchain_core.messages import AIMessage, ToolMessage

from app.turns.events import ToolCalled, ToolReturned, tool_events


def test_tool_events_from_stored_messages() -> None:
    call = AIMessage("", tool_calls=[{"id": "c9", "name": "current_time", "args": {}}])
    result = ToolMessage("12:00", tool_call_id="c9", name="current_time")
    assert tool_events(call) == [ToolCalled("c9", "current_time", {})]
    assert tool_events(result) == [ToolReturned("c9", "current_time", "12:00", "success")]
    assert tool_events(AIMessage("plain reply")) == []
