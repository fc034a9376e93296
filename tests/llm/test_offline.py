from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from app.agents.tools import build_builtin_tools
from app.llm.offline import OfflineChatModel


async def test_echoes_with_turn_number_and_previous_message() -> None:
    model = OfflineChatModel()
    first = await model.ainvoke([HumanMessage("hello")])
    assert "turn 1" in first.text and "hello" in first.text
    second = await model.ainvoke([HumanMessage("hello"), first, HumanMessage("again")])
    assert "turn 2" in second.text
    assert "again" in second.text and "Before that you said: hello" in second.text
    assert second.usage_metadata and second.usage_metadata["total_tokens"] > 0


async def test_streams_word_by_word() -> None:
    chunks = [c async for c in OfflineChatModel().astream([HumanMessage("one two three")])]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 5
    assert "".join(texts).endswith("one two three")


async def test_asks_for_the_time_tool_when_bound() -> None:
    tools = list(build_builtin_tools().values())
    model = OfflineChatModel().bind_tools(tools)
    reply = await model.ainvoke([HumanMessage("what time is it?")])
    assert isinstance(reply, AIMessage)
    assert [c["name"] for c in reply.tool_calls] == ["current_time"]
    after = await model.ainvoke([
        HumanMessage("what time is it?"), reply,
        ToolMessage("12:00", tool_call_id=reply.tool_calls[0]["id"] or "", name="current_time"),
    ])
    assert after.text == "The current_time tool says: 12:00"


async def test_without_the_tool_it_just_answers() -> None:
    reply = await OfflineChatModel().ainvoke([HumanMessage("what time is it?")])
    assert isinstance(reply, AIMessage) and not reply.tool_calls
