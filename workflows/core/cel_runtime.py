"""cel-python's interpreter, bounded on any thread and held to the CEL spec.

Bounds: every node the interpreter visits spends from a per-evaluation budget that checks
the calling thread's CPU time (`time.thread_time`), so the time limit holds in a for_each
thread, a Celery worker or a web request alike (a signal timer only works on the main
thread). Every operator that can grow a value (`+` on strings, bytes and lists) checks the
size of what it builds; string formatting (`%`), which can build any size from a short
expression, is not CEL and is refused.

Spec: where cel-python deviates from CEL, the operators here follow the spec or refuse with
a message in CEL's words — no negative list indexes, no indexing of strings, `&&`, `||`,
`!` and `? :` only on bools, `in` only on lists and maps, `string()` only of scalars,
numbers compare across int, uint and double, and `==` between different types is false.
Messages never show Python: no class names, no reprs, no values (they may be secrets).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import celpy
import lark
import re2
from celpy import celtypes
from celpy.evaluation import CELEvalError, Evaluator, NameContainer

from workflows.core.cel_values import kind, plural

MAX_STRING_BYTES = 1024 * 1024  # any intermediate string or bytes value
MAX_LIST_ITEMS = 100_000  # any intermediate list built by `+`
_CHECK_EVERY = 64  # nodes between two looks at the clock
MACROS = {"map", "filter", "all", "exists", "exists_one"}
PREDICATES = {"filter", "all", "exists", "exists_one"}
CONVERSIONS = {"int", "uint", "double", "string", "bytes", "bool", "timestamp", "duration"}
NOT_CEL = {"reduce", "min"}  # cel-python extras, not CEL: refused when compiled


class LimitExceeded(BaseException):
    """The evaluation ran out of CPU time. A BaseException, so that no `except Exception`
    inside cel-python can turn it into an ordinary value and carry on."""


class Budget:
    __slots__ = ("deadline", "fired", "ticks_left")

    def __init__(self, seconds: float):
        self.deadline = time.thread_time() + seconds
        self.ticks_left = _CHECK_EVERY
        self.fired = False

    def tick(self) -> None:
        self.ticks_left -= 1
        if self.ticks_left <= 0:
            self.ticks_left = _CHECK_EVERY
            # Sticky: once over, every later tick raises again, so a swallowed raise
            # (in a finalizer, say) cannot let the evaluation run on.
            if self.fired or time.thread_time() > self.deadline:
                self.fired = True
                raise LimitExceeded


_budget: ContextVar[Budget | None] = ContextVar("cel_budget", default=None)


def error(message: str) -> CELEvalError:
    """An error value with a message meant for people (see `expressions.message_of`)."""
    exc = CELEvalError(message)
    exc.friendly = True  # type: ignore[attr-defined]
    return exc


def _first_error(*values: Any) -> CELEvalError | None:
    for value in values:
        if isinstance(value, CELEvalError):
            return value
    return None


# --- operators ----------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, (bool, celtypes.BoolType))


def _checked_size(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > MAX_STRING_BYTES:
            return error(f"a string would be over {MAX_STRING_BYTES} characters")
        return celtypes.StringType(value)
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_STRING_BYTES:
            return error(f"a bytes value would be over {MAX_STRING_BYTES} bytes")
        return celtypes.BytesType(bytes(value))
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            return error(f"a list would have over {MAX_LIST_ITEMS} items")
        return value if isinstance(value, celtypes.ListType) else celtypes.ListType(value)
    return value


def _no_operator(symbol: str, *values: Any) -> CELEvalError:
    return error(f"no operator `{symbol}` for {' and '.join(kind(v) for v in values)}")


def _arithmetic(symbol: str, function):
    def apply(left: Any, right: Any) -> Any:
        if (failed := _first_error(left, right)) is not None:
            return failed
        # CEL has no implicit conversions: int + double is an error, as is any mix.
        if type(left) is not type(right) and not (
            isinstance(left, (celtypes.TimestampType, celtypes.DurationType))
            and isinstance(right, (celtypes.TimestampType, celtypes.DurationType))
        ):
            return _no_operator(symbol, left, right)
        if isinstance(left, (Mapping, celtypes.BoolType, bool)):
            return _no_operator(symbol, left, right)
        if symbol == "%" and not isinstance(left, int):
            return _no_operator(symbol, left, right)  # `'%s' % x` is Python, not CEL
        if symbol != "+" and isinstance(left, (str, bytes, list)):
            return _no_operator(symbol, left, right)
        # `+` on strings, bytes and lists: the size of the sum is known before building it.
        if isinstance(left, (str, bytes, list)) and len(left) + len(right) > (
            MAX_LIST_ITEMS if isinstance(left, list) else MAX_STRING_BYTES
        ):
            return _oversized(left)
        try:
            return _checked_size(function(left, right))
        except ZeroDivisionError:
            return error("division by zero")
        except (ValueError, OverflowError):
            return error(f"`{symbol}` overflows the range of {kind(left)}")
        except (TypeError, AttributeError):
            return _no_operator(symbol, left, right)

    return apply


def _oversized(sample: Any) -> CELEvalError:
    if isinstance(sample, list):
        return error(f"a list would have over {MAX_LIST_ITEMS} items")
    if isinstance(sample, bytes):
        return error(f"a bytes value would be over {MAX_STRING_BYTES} bytes")
    return error(f"a string would be over {MAX_STRING_BYTES} characters")


def _negate(value: Any) -> Any:
    if isinstance(value, CELEvalError):
        return value
    negatable = _is_number(value) or isinstance(value, celtypes.DurationType)
    if not negatable or isinstance(value, celtypes.UintType):
        return error(f"no operator `-` for {kind(value)}")
    try:
        return operator.neg(value)
    except (ValueError, OverflowError):
        return error(f"`-` overflows the range of {kind(value)}")


def _not(value: Any) -> Any:
    if isinstance(value, CELEvalError):
        return value
    if not isinstance(value, celtypes.BoolType):
        return error(f"no operator `!` for {kind(value)}")
    return celtypes.BoolType(not value)


def _logic(symbol: str, absorbing: bool):
    """`&&` (absorbing false) and `||` (absorbing true), commutative as CEL says: the
    absorbing value wins over an error on the other side; anything but a bool is an error."""

    def apply(left: Any, right: Any) -> Any:
        for value in (left, right):
            if isinstance(value, celtypes.BoolType) and bool(value) is absorbing:
                return celtypes.BoolType(absorbing)
        if isinstance(left, celtypes.BoolType) and isinstance(right, celtypes.BoolType):
            return celtypes.BoolType(not absorbing)
        if (failed := _first_error(left, right)) is not None:
            return failed
        return _no_operator(symbol, left, right)

    return apply


def _choose(condition: Any, left: Any, right: Any) -> Any:
    if isinstance(condition, CELEvalError):
        return condition
    if not isinstance(condition, celtypes.BoolType):
        return error(f"the condition of `? :` must be a bool, not {kind(condition)}")
    return left if condition else right


def _index(container: Any, index: Any) -> Any:
    if (failed := _first_error(container, index)) is not None:
        return failed
    if isinstance(container, list):
        if not isinstance(index, int) or isinstance(index, celtypes.BoolType):
            return error(f"a list index must be an int, not {kind(index)}")
        # The index is not shown: it may be computed from a secret (`[0][int(secrets.pin)]`).
        if index < 0:
            return error("a list index cannot be negative (CEL counts from the start only)")
        if index >= len(container):
            return error(f"index out of range (the list has {len(container)} items)")
        return container[index]
    if isinstance(container, Mapping):
        if isinstance(index, (list, Mapping)) or index is None:
            return error(f"a map key cannot be a {kind(index)}")
        try:
            return container[index]
        except KeyError:
            # The key itself is not shown: it may be computed from a secret.
            return error(f"no such key in the map (a key of type {kind(index)})")
        except TypeError:
            return error(f"a map key cannot be a {kind(index)}")
    return error(f"{plural(container)} cannot be indexed")


def equal(left: Any, right: Any) -> bool:
    """CEL equality: numbers compare by value across int, uint and double; lists and maps
    element by element; values of different types are not equal."""
    if _is_number(left) and _is_number(right):
        return _plain(left) == _plain(right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        if len(left) != len(right):
            return False
        # By hash lookup: comparing every key with every key is quadratic, and this loop
        # is ours, between two of the interpreter's budget checks.
        for key, value in left.items():
            try:
                other = right[key]
            except (KeyError, TypeError):
                return False
            if not equal(value, other):
                return False
        return True
    if kind(left) != kind(right):
        return False
    try:
        return bool(left == right)
    except (TypeError, ValueError):
        return False


def _equality(negate: bool):
    def apply(left: Any, right: Any) -> Any:
        if (failed := _first_error(left, right)) is not None:
            return failed
        return celtypes.BoolType(equal(left, right) is not negate)

    return apply


def _ordering(symbol: str, function):
    def apply(left: Any, right: Any) -> Any:
        if (failed := _first_error(left, right)) is not None:
            return failed
        comparable = (_is_number(left) and _is_number(right)) or (
            kind(left) == kind(right)
            and kind(left) in ("string", "bytes", "bool", "timestamp", "duration")
        )
        if not comparable:
            return _no_operator(symbol, left, right)
        try:
            return celtypes.BoolType(function(_plain(left), _plain(right)))
        except TypeError:
            return _no_operator(symbol, left, right)

    return apply


def _plain(value: Any) -> Any:
    # Compare numbers as Python numbers: exact across int and float, no celtypes overloads.
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _in(item: Any, container: Any) -> Any:
    if (failed := _first_error(item, container)) is not None:
        return failed
    if isinstance(container, list):
        return celtypes.BoolType(any(equal(item, member) for member in container))
    if isinstance(container, Mapping):
        try:
            return celtypes.BoolType(item in container)
        except TypeError:  # an int key asked of a map by a double: no such key
            return celtypes.BoolType(False)
    return _no_operator("in", item, container)


FUNCTIONS = {
    "_+_": _arithmetic("+", operator.add),
    "_-_": _arithmetic("-", operator.sub),
    "_*_": _arithmetic("*", operator.mul),
    "_/_": _arithmetic("/", operator.truediv),
    "_%_": _arithmetic("%", operator.mod),
    "-_": _negate,
    "!_": _not,
    "_&&_": _logic("&&", absorbing=False),
    "_||_": _logic("||", absorbing=True),
    "_?_:_": _choose,
    "_[_]": _index,
    "_==_": _equality(negate=False),
    "_!=_": _equality(negate=True),
    "_<_": _ordering("<", operator.lt),
    "_<=_": _ordering("<=", operator.le),
    "_>_": _ordering(">", operator.gt),
    "_>=_": _ordering(">=", operator.ge),
    "_in_": _in,
}

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print the pattern (it may hold a secret) to stderr


def _matches(text: Any, pattern: Any) -> Any:
    """`matches`, with RE2 (linear time, as CEL says) and quietly."""
    if (failed := _first_error(text, pattern)) is not None:
        return failed
    if not isinstance(text, str) or not isinstance(pattern, str):
        return error(f"no method `matches` on {plural(text)} taking ({kind(pattern)})")
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error:
        return error("invalid regular expression")
    return celtypes.BoolType(compiled.search(text) is not None)


FUNCTIONS["matches"] = _matches

# What `string()` may convert (CEL has no string of a list or map; cel-python gives a repr).
_STRINGABLE = ("string", "int", "uint", "double", "bytes", "bool", "timestamp", "duration")


# --- the interpreter ----------------------------------------------------------------------------
class BoundedEvaluator(Evaluator):
    """cel-python's Evaluator, spending a budget at each node and speaking CEL in errors."""

    def __init__(self, ast: lark.Tree, activation) -> None:
        super().__init__(ast, activation)
        self._given: tuple[lark.Tree, Any] | None = None

    def _visit_tree(self, tree):
        budget = _budget.get()
        if budget is not None:
            budget.tick()
        given = self._given
        if given is not None and given[0] is tree:
            self._given = None
            return given[1]
        return super()._visit_tree(tree)

    def sub_evaluator(self, ast: lark.Tree) -> BoundedEvaluator:
        return BoundedEvaluator(ast, activation=self.activation)

    def member_dot(self, tree: lark.Tree) -> Any:
        member_tree, name_token = tree.children
        member = self.visit(member_tree)
        name = name_token.value
        if isinstance(member, CELEvalError):
            return member
        if isinstance(member, NameContainer):
            if name in member:
                return member[name].value
            return error(f"undeclared reference to `{name}`")
        if isinstance(member, celtypes.MapType):
            try:
                return member[name]
            except KeyError:
                return error(f"no key `{name}` in the map")
        return error(f"{plural(member)} have no field `{name}`")

    def build_macro_eval(self, child: lark.Tree):
        # filter and exists_one keep the items their predicate is *truthy* for in
        # cel-python (`[1].filter(x, 1)` kept 1): CEL wants a bool.
        evaluate_item = super().build_macro_eval(child)
        name = child.children[1].value
        if name not in PREDICATES:
            return evaluate_item

        def predicate(item: Any) -> Any:
            result = evaluate_item(item)
            if not isinstance(result, celtypes.BoolType):
                raise error(f"the predicate of `{name}` must give a bool, not {kind(result)}")
            return result

        return predicate

    def build_ss_macro_eval(self, child: lark.Tree):
        # all and exists: an error on one item may be outweighed by another item, so a
        # non-bool is turned into an error value, which their reduction then weighs.
        evaluate_item = super().build_ss_macro_eval(child)
        name = child.children[1].value

        def predicate(item: Any) -> Any:
            result = evaluate_item(item)
            if isinstance(result, (celtypes.BoolType, CELEvalError)):
                return result
            return error(f"the predicate of `{name}` must give a bool, not {kind(result)}")

        return predicate

    def macro_has_eval(self, exprlist: lark.Tree) -> Any:
        # has(e.f) is whether the map e has the key f (cel-python answered whether e.f
        # reads without error: false for a key holding a value CEL cannot represent).
        node = exprlist
        while node.data != "member_dot" and len(node.children) == 1:
            if not isinstance(node.children[0], lark.Tree):
                break
            node = node.children[0]
        if node.data != "member_dot":
            return error("has() takes a field selection, such as has(event.data.name)")
        member_tree, name_token = node.children
        member = self.visit(member_tree)
        if isinstance(member, CELEvalError):
            return member
        if isinstance(member, Mapping):
            return celtypes.BoolType(name_token.value in member)
        return error(f"{plural(member)} have no field `{name_token.value}`")

    def member_dot_arg(self, tree: lark.Tree) -> Any:
        name = tree.children[1].value
        if name in MACROS:
            # A macro iterates its target: only lists and maps (cel-python would walk the
            # characters of a string). The target is evaluated once, here, and handed to
            # cel-python's macro code through `_given`.
            target = self.visit(tree.children[0])
            if not isinstance(target, (list, Mapping, CELEvalError)):
                return error(f"{plural(target)} have no macro `{name}`")
            self._given = (tree.children[0], target)
        return super().member_dot_arg(tree)

    def function_eval(self, name_token: lark.Token, exprlist=None) -> Any:
        name = name_token.value
        if isinstance(exprlist, CELEvalError):
            return exprlist
        args = list(exprlist or [])
        if (failed := _first_error(*args)) is not None:
            return failed
        if name == "string" and len(args) == 1 and kind(args[0]) not in _STRINGABLE:
            return error(f"cannot convert {kind(args[0])} to string")
        result = super().function_eval(name_token, args)
        return self._explained(result, name, args, method=False)

    def method_eval(self, object: Any, method_ident: lark.Token, exprlist=None) -> Any:
        name = method_ident.value
        if isinstance(object, CELEvalError):
            return object
        if isinstance(exprlist, CELEvalError):
            return exprlist
        args = list(exprlist or [])
        if (failed := _first_error(*args)) is not None:
            return failed
        result = super().method_eval(object, method_ident, args)
        return self._explained(result, name, [object, *args], method=True)

    @staticmethod
    def _explained(result: Any, name: str, args: list, *, method: bool) -> Any:
        if not isinstance(result, CELEvalError) or getattr(result, "friendly", False):
            return result
        text = str(result.args[0]) if result.args else ""
        if text.startswith("undeclared reference"):
            return error(f"unknown {'method' if method else 'function'} `{name}`")
        if text == "return error for overflow" and args:
            if name in CONVERSIONS:
                return error(f"cannot convert this {kind(args[0])} to {name}")
            return error(f"invalid argument for `{name}`")
        if text == "match error":
            return error("invalid regular expression")
        if method:
            kinds = ", ".join(kind(a) for a in args[1:])
            return error(f"no method `{name}` on {plural(args[0])} taking ({kinds})")
        kinds = ", ".join(kind(a) for a in args)
        return error(f"no function `{name}` taking ({kinds})")


class BoundedRunner(celpy.InterpretedRunner):
    def evaluate(self, context) -> Any:
        return BoundedEvaluator(ast=self.ast, activation=self.new_activation()).evaluate(context)


def run(program: BoundedRunner, activation: dict, *, seconds: float) -> tuple[Any, bool]:
    """Evaluate under a fresh CPU-time budget on this thread: (value, whether the budget
    ran out). May raise LimitExceeded or CELEvalError."""
    budget = Budget(seconds)
    token = _budget.set(budget)
    try:
        return program.evaluate(activation), budget.fired
    finally:
        _budget.reset(token)


def refused_names(ast: lark.Tree) -> list[str]:
    """Macros cel-python has that CEL does not (`reduce`, `min`)."""
    return sorted(
        {
            node.children[1].value
            for node in ast.iter_subtrees()
            if node.data == "member_dot_arg"
            and isinstance(node.children[1], lark.Token)
            and node.children[1].value in NOT_CEL
        }
    )
