"""The `calculator` tool: exact arithmetic on an expression, evaluated from its syntax tree (never `eval`).

>>> calculate("(17 + 3) * 2 ** 10 / 4")
5120
>>> calculate("7 / 2"), calculate("7 // 2"), calculate("-7 % 3"), calculate("1.5e3 + 1")
(3.5, 3, 2, 1501)

Hand-written: the few lines below are the whole evaluator; libraries that parse formulas (sympy, numexpr,
simpleeval) bring far more than + - * / // % ** on numbers, which is all the tool should allow.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_EXPRESSION_CHARS = 1000
MAX_EXPONENT = 10_000  # |b| in a ** b
MAX_INT_BITS = 10_000  # any intermediate integer (~3,000 digits, under Python's 4,300-digit str() limit)
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its value is out of bounds."""


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"result too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    return value


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (the limit is {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:  # check before computing it
            raise CalculatorError(f"result too large (more than {MAX_INT_BITS} bits)")
    result = base**exponent
    if isinstance(result, complex):
        raise CalculatorError("the result is not a real number")
    return result


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        return _check_size(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand))
    raise CalculatorError(f"not allowed in an arithmetic expression: {ast.unparse(node)!r}")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic `expression`: numbers, + - * / // % **, parentheses.

    A float result that is a whole number of modest size is returned as an int (7 / 7 -> 1).
    Raises CalculatorError for anything else, division by zero and out-of-bounds values.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise CalculatorError(f"not a valid expression: {error}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (OverflowError, RecursionError):
        raise CalculatorError("result out of range") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value
