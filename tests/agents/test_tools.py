from datetime import UTC, datetime

import pytest

from app.agents.tools import build_builtin_tools, evaluate_arithmetic


def test_calculator_evaluates_arithmetic() -> None:
    assert evaluate_arithmetic("2 + 3 * (4 - 1)") == 11
    assert evaluate_arithmetic("-2 ** 2") == -4
    assert evaluate_arithmetic("7 // 2 + 7 % 2") == 4


@pytest.mark.parametrize("expression", [
    "__import__('os')", "a + 1", "2 ** 1000", "1 / 0", "[1, 2]", "x" * 300, "1 +",
])
def test_calculator_refuses_anything_else(expression: str) -> None:
    with pytest.raises(ValueError):
        evaluate_arithmetic(expression)


async def test_current_time_uses_the_injected_clock_and_zone() -> None:
    tools = build_builtin_tools(clock=lambda: datetime(2026, 1, 2, 12, 0, tzinfo=UTC))
    assert await tools["current_time"].ainvoke({}) == "2026-01-02T12:00:00+00:00"
    assert await tools["current_time"].ainvoke({"timezone_name": "Asia/Tokyo"}) == (
        "2026-01-02T21:00:00+09:00"
    )
    with pytest.raises(ValueError):
        await tools["current_time"].ainvoke({"timezone_name": "Mars/Base"})
