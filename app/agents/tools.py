"""The builtin tool registry: tools a tenant may name in its ``tools`` list."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain_core.tools import BaseTool, tool

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


_BIN_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_EXPRESSION = 200
_MAX_EXPONENT = 100


def evaluate_arithmetic(expression: str) -> float | int:
    """Evaluate + - * / // % ** on numbers only; anything else is a ValueError."""
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ValueError(f"exponent above {_MAX_EXPONENT}")
            return _BIN_OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            return _UNARY_OPS[type(node.op)](walk(node.operand))
        raise ValueError(f"unsupported element in expression: {ast.dump(node)[:40]}")

    try:
        return walk(tree)  # type: ignore[no-any-return]
    except ZeroDivisionError as exc:
        raise ValueError("division by zero") from exc


def build_builtin_tools(clock: Clock = _utc_now) -> dict[str, BaseTool]:
    """One instance of each builtin tool; tenants share these objects."""

    @tool
    def current_time(timezone_name: str = "UTC") -> str:
        """Current date and time as ISO 8601 in the given IANA time zone (default UTC)."""
        try:
            zone = ZoneInfo(timezone_name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone_name!r}") from exc
        return clock().astimezone(zone).isoformat(timespec="seconds")

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression with + - * / // % ** and parentheses."""
        return str(evaluate_arithmetic(expression))

    return {t.name: t for t in (current_time, calculator)}


class ToolRegistry:
    """Builtin tools by name, built once per worker."""

    def __init__(self, tools: dict[str, BaseTool]) -> None:
        self._tools = tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def select(self, names: Iterable[str]) -> list[BaseTool]:
        return [self._tools[name] for name in names]
