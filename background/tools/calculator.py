"""Arithmetic the model should not do in its head, evaluated without `eval`.

The expression is parsed with `ast` and walked node by node; only numbers, the arithmetic
operators, parentheses and a whitelist of math names get through. Sizes are bounded before
they are computed (`9**9**9` is refused, not attempted), so an evaluation takes microseconds.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from background.tools.base import Tool, ToolError

MAX_EXPRESSION_CHARS = 200
MAX_INT_BITS = 4096  # about 1,233 decimal digits: any larger integer result is refused
MAX_EXPONENT = 10_000  # for float powers; integer powers are bounded by MAX_INT_BITS instead
MAX_ROUND_DIGITS = 100

Number = int | float

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: Number, ndigits: int | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round: ndigits must be an integer within ±{MAX_ROUND_DIGITS}")
    return round(x, ndigits)


FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {  # name: (function, min, max args)
    "sqrt": (math.sqrt, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "min": (min, 1, 50),
    "max": (max, 1, 50),
}

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _check_size(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number (overflow or undefined)")
    return value


def _power(base: Number, exponent: Number) -> Number:
    """`base ** exponent`, refused up front when the result would be too large to compute."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent >= 0:
        if abs(base) > 1 and exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS:
            raise ToolError(f"exponent too large: result would exceed {MAX_INT_BITS} bits")
        return base ** exponent
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (limit {MAX_EXPONENT})")
    try:
        result = float(base) ** float(exponent)
    except ZeroDivisionError:
        raise ToolError("zero cannot be raised to a negative power") from None
    if isinstance(result, complex):
        raise ToolError("a negative number to a fractional power has no real result")
    return result


class _Evaluator:
    """Walks a parsed expression, allowing only whitelisted nodes."""

    def eval(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant):
            if type(node.value) in (int, float):
                return _check_size(node.value)
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            hint = " (it is a function: call it with parentheses)" if node.id in FUNCTIONS else ""
            raise ToolError(f"unknown name {node.id!r}{hint}; known constants: {', '.join(CONSTANTS)}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            value = self.eval(node.operand)
            return value if isinstance(node.op, ast.UAdd) else -value
        if isinstance(node, ast.BinOp):
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Pow):
                return _check_size(_power(left, right))
            op = _BINARY.get(type(node.op))
            if op is None:
                raise ToolError(f"operator {type(node.op).__name__} is not allowed")
            try:
                return _check_size(op(left, right))
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ToolError(f"{type(node).__name__} is not allowed in an expression")

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name):
            raise ToolError(f"only plain function names can be called: {', '.join(FUNCTIONS)}")
        if node.func.id not in FUNCTIONS:
            raise ToolError(f"unknown function {node.func.id!r}; known: {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise ToolError("keyword arguments are not allowed")
        function, least, most = FUNCTIONS[node.func.id]
        if not least <= len(node.args) <= most:
            raise ToolError(f"{node.func.id} takes {least}" + (f" to {most}" if most > least else "")
                            + f" argument(s), got {len(node.args)}")
        args = [self.eval(a) for a in node.args]
        try:
            return _check_size(function(*args))
        except (ValueError, OverflowError) as exc:
            raise ToolError(f"{node.func.id}: {exc}") from None
        except ZeroDivisionError:
            raise ToolError(f"{node.func.id}: division by zero") from None


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression, or `ToolError` saying why there is none."""
    expression = expression.strip()
    if not expression:
        raise ToolError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long ({len(expression)} > {MAX_EXPRESSION_CHARS} characters)")
    expression = expression.replace("^", "**")  # what people mean by 2^10
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"syntax error at column {exc.offset}: {exc.msg}") from None
    try:
        return _Evaluator().eval(tree)
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression nested too deeply") from None


class CalculatorTool(Tool):
    """Exact, safe arithmetic for the reasoner."""

    name = "calculator"
    description = ("Evaluate an arithmetic expression: numbers, + - * / // % ** (or ^), parentheses, "
                   "the constants pi, e, tau and the functions " + ", ".join(FUNCTIONS) + ".")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "for example: sqrt(2) * (3 + 4) ** 2",
                "pattern": "^[0-9A-Za-z_+*/%^().,\\- ]{1," + str(MAX_EXPRESSION_CHARS) + "}$",
            },
        },
        "required": ["expression"],
        "additionalProperties": False,
    }

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"expression": args["expression"].strip(), "result": evaluate(args["expression"])}
