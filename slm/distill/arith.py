"""Safe evaluation of SVAMP-style arithmetic: numbers, + - * /, unary minus, parentheses.

SVAMP labels are expressions such as `( ( 17.0 + 15.0 ) + 2.0 )`; a prediction is right when its
value equals the gold value. The expression is parsed with `ast` and walked; nothing is executed,
so `__import__('os')` or `2 ** 10 ** 10` is rejected, never run.
"""
from __future__ import annotations

import ast
import math
import operator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_CHARS = 200  # longer text is not a SVAMP expression; refuse before parsing


class NotArithmetic(ValueError):
    """The text is not an arithmetic expression of numbers and + - * /."""


def evaluate(expression: str) -> float:
    """The value of `expression`; raises `NotArithmetic` for anything but numbers and + - * /."""
    text = expression.strip()
    if not text or len(text) > MAX_CHARS:
        raise NotArithmetic(f"not an arithmetic expression: {expression[:60]!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise NotArithmetic(f"not an arithmetic expression: {expression[:60]!r}") from e
    return _walk(tree.body)


def _walk(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise NotArithmetic("division by zero")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand))
    raise NotArithmetic(f"not allowed in an arithmetic expression: {ast.dump(node)[:60]}")


def try_evaluate(expression: str) -> float | None:
    """The value, or None when the text is not a valid expression (the caller counts the miss)."""
    try:
        value = evaluate(expression)
    except NotArithmetic:
        return None
    return value if math.isfinite(value) else None


def same_value(a: float | None, b: float | None, *, rel_tol: float = 1e-4) -> bool:
    """Two answers agree when both exist and are equal up to rounding (SVAMP answers are short decimals)."""
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-6)
