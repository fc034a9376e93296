"""The two history caps: what a thread stores, and what the model sees of it.

Both cut at a user message, so a tool result never loses the call that asked for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage

TRUNCATION_MARK = " …[truncated]"


def turn_start(messages: Sequence[BaseMessage], keep: int) -> int:
    """Index from which about ``keep`` messages remain, at the start of a user turn.

    The cut moves forward to the next user message. When no user message follows it
    (the current turn alone is longer than ``keep``), the current turn is kept whole.
    """
    cut = max(0, len(messages) - keep)
    if cut == 0:
        return 0
    for index in range(cut, len(messages)):
        if isinstance(messages[index], HumanMessage):
            return index
    for index in range(cut - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return index
    for index in range(cut, len(messages)):
        if not isinstance(messages[index], ToolMessage):
            return index
    return len(messages)


def storage_overflow(messages: Sequence[BaseMessage], max_stored: int) -> list[BaseMessage]:
    """The oldest messages to drop so that at most ``max_stored`` remain."""
    if len(messages) <= max_stored:
        return []
    return list(messages[: turn_start(messages, max_stored)])


def model_window(
    messages: Sequence[BaseMessage], max_messages: int, max_chars: int
) -> list[BaseMessage]:
    """The last ``max_messages`` messages, older long ones truncated to ``max_chars``.

    The newest user message and everything after it reach the model whole.
    """
    window = list(messages[turn_start(messages, max_messages) :])
    last_human = max(
        (i for i, m in enumerate(window) if isinstance(m, HumanMessage)), default=len(window)
    )
    for index in range(last_human):
        message = window[index]
        content = message.content
        if isinstance(content, str) and len(content) > max_chars:
            window[index] = message.model_copy(
                update={"content": content[:max_chars] + TRUNCATION_MARK}
            )
    return window
