"""Checking a model's reply against a known answer, and the rewards GRPO trains on. A reply is
free text; its final answer is the content of the last `<answer>…</answer>` when there is one,
else what follows the last "answer is" / "answer:", else the whole reply. What counts as equal
depends on the answer's form, so one `check(reply, answer)` serves every templated task:

- a number ("42", "-7", "7.77"): the last number of the final answer, compared exactly as a
  decimal ("1,234" and "7.770" are read as 1234 and 7.77);
- a list ("[3, 5, 9]"): the last bracketed list, else every number of the final answer, in order;
- an expression ("(8 - 5) * 3", a countdown solution): any expression that uses the same numbers,
  each exactly once, with + - * / and parentheses, and has the same value. It is parsed with
  `ast` and evaluated over fractions by walking the tree, never with eval: a reply is untrusted;
- anything else (a word): the last word of the final answer, exactly (case counts: "HELLO").

Rewards are plain functions of (reply, answer) returning 0.0 or 1.0."""

from __future__ import annotations

import ast
import re
from collections import Counter
from decimal import Decimal
from fractions import Fraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_MARKER = re.compile(r"answer\s*(?:is|:)", re.I)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_EXPRESSION = re.compile(r"[\d\s+\-*/()]+")
_OPERATOR_BETWEEN = re.compile(r"[\d)]\s*[+\-*/]\s*[\d(]")
_THINK_ANSWER = re.compile(r"\s*<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>\s*", re.S)
_SYMBOLS = {"×": "*", "÷": "/", "−": "-", "–": "-"}
MAX_EXPRESSION_CHARS = 200    # a countdown solution is a few numbers; longer is not an answer


def final_answer(reply: str) -> str:
    """The part of a reply that states its answer (see the module docstring)."""
    tags = _ANSWER_TAG.findall(reply)
    if tags:
        return tags[-1].strip()
    markers = list(_MARKER.finditer(reply))
    return reply[markers[-1].end():].strip() if markers else reply.strip()


def answer_kind(answer: str) -> str:
    """"number", "list", "expression" or "text": how `check` compares a reply to `answer`."""
    answer = answer.strip()
    if _PLAIN_NUMBER.fullmatch(answer):
        return "number"
    if answer.startswith("[") and answer.endswith("]"):
        return "list"
    if _EXPRESSION.fullmatch(answer) and _OPERATOR_BETWEEN.search(answer):
        return "expression"
    return "text"


def numbers_in(text: str) -> list[Decimal]:
    """The numbers written in `text`, in order; thousands separators allowed ("1,234")."""
    return [Decimal(m.group().replace(",", "")) for m in _NUMBER.finditer(text)]


def check(reply: str, answer: str) -> bool:
    """Whether the final answer of `reply` is `answer` (compared as the module docstring says)."""
    said = final_answer(reply)
    kind = answer_kind(answer)
    if kind == "number":
        found = numbers_in(said)
        return bool(found) and found[-1] == Decimal(answer.strip())
    if kind == "list":
        return _list_in(said) == numbers_in(answer)
    if kind == "expression":
        return _solves(said, answer)
    words = re.findall(r"[^\s\"'`*.,!?:;()]+", said)
    return bool(words) and words[-1] == answer.strip()


def _list_in(text: str) -> list[Decimal]:
    lists = re.findall(r"\[([^\[\]]*)\]", text)
    return numbers_in(lists[-1] if lists else text)


# -- countdown expressions -------------------------------------------------------------------

def expression_in(text: str) -> str | None:
    """The last stretch of `text` that reads as arithmetic on numbers ("(8 - 5) * 3" out of
    "so (8 - 5) * 3 = 9."); × ÷ − and an x between numbers are read as * / -."""
    for symbol, ascii_ in _SYMBOLS.items():
        text = text.replace(symbol, ascii_)
    text = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", " * ", text)
    runs = [r.strip() for r in _EXPRESSION.findall(text)]
    runs = [r for r in runs if _OPERATOR_BETWEEN.search(r)]
    return runs[-1] if runs else None


_OPERATIONS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
               ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def evaluate_expression(expr: str) -> Fraction | None:
    """The exact value of `expr` if it is integers joined by + - * / and parentheses; None for
    anything else (names, calls, powers, floats, a division by zero, too long)."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    return _value(tree.body)


def _value(node: ast.AST) -> Fraction | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATIONS:
        left, right = _value(node.left), _value(node.right)
        if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
            return None
        return _OPERATIONS[type(node.op)](left, right)
    return None     # a name, call, attribute, power, unary minus, float...: not a countdown answer


def expression_numbers(expr: str) -> Counter:
    """How often each integer is written in `expr`."""
    return Counter(int(n) for n in re.findall(r"\d+", expr))


def _solves(said: str, reference: str) -> bool:
    """Whether `said` holds an expression with the numbers of `reference`, each used exactly as
    often, and its value."""
    expr = expression_in(said)
    if expr is None or expression_numbers(expr) != expression_numbers(reference):
        return False
    value = evaluate_expression(expr)
    return value is not None and value == evaluate_expression(reference)


# -- rewards ---------------------------------------------------------------------------------

def exact_answer_reward(reply: str, answer: str) -> float:
    """1.0 when the reply's final answer is right, else 0.0."""
    return 1.0 if check(reply, answer) else 0.0


def format_reward(reply: str) -> float:
    """1.0 when the reply is exactly `<think>…</think><answer>…</answer>` (whitespace around
    and between allowed, each tag once), the format DeepSeek-R1 trained with; else 0.0."""
    return 1.0 if _THINK_ANSWER.fullmatch(reply) else 0.0
