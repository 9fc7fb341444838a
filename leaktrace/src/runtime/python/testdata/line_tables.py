"""Prints, for every code object below, its line table and the
interpreter's own line for each instruction offset. Runs under 2.7 and
3.6+; read by line_table_tests.rs.

One line per code object:
CODE <name> <co_firstlineno> <table hex> <offset step> <line per offset, - for none>
"""
from __future__ import print_function

import binascii
import dis
import sys
import types


def loops(n):
    total = 0
    for i in range(n):
        if i % 3 == 0:
            total += i
        else:
            total -= 1
    while total > 10:
        total //= 2
    return total


def multiline(a, b):
    value = (a +
             b *
             a)
    call = max(
        a,
        b,
    )
    return [x
            for x in range(value)
            if x != call]


def handler(x):
    try:
        y = 1 / x
    except ZeroDivisionError:
        y = 0
    finally:
        x = None
    return y


square = lambda v: (v *
                    v)


def generator(n):
    for i in range(n):
        yield i * 2
    yield -1


# Longer than 255 lines, a line step over 127 and a line of over 255
# bytes of code: the multi-byte deltas of co_lnotab.
LONG = (
    "def long_function(a):\n"
    "    a += 1\n"
    + "    # filler\n" * 300
    + "    a += 2\n"
    + "    b = [" + ", ".join("a + %d" % i for i in range(200)) + "]\n"
    + "\n" * 140
    + "    for i in b:\n"
    + "        a -= i\n"
    + "    return a\n"
)
namespace = {}
exec(compile(LONG, "long_source.py", "exec"), namespace)
long_function = namespace["long_function"]


def codes(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            for inner in codes(const):
                yield inner


def lines_of(code):
    size = len(code.co_code)
    if sys.version_info >= (3, 10):
        lines = [None] * (size // 2)
        for start, end, line in code.co_lines():
            for offset in range(start, end, 2):
                if offset // 2 < len(lines):
                    lines[offset // 2] = line
        return code.co_linetable, 2, lines
    starts = list(dis.findlinestarts(code))
    lines = []
    for offset in range(size):
        line = None
        for start, start_line in starts:
            if start <= offset:
                line = start_line
        lines.append(line)
    return code.co_lnotab, 1, lines


for function in [loops, multiline, handler, square, generator, long_function]:
    for code in codes(function.__code__):
        table, step, lines = lines_of(code)
        print(
            "CODE",
            code.co_name.replace(" ", "_") or "-",
            code.co_firstlineno,
            binascii.hexlify(table).decode("ascii") or "-",
            step,
            ",".join("-" if line is None else str(line) for line in lines),
        )
