"""Prints, for a few functions, the address of the code object (id() in
CPython), its name and file (UTF-8, hex) and first line, then waits to be
read and killed. Runs under 2.7 and 3.6+; read by code_object_tests.rs.

One line per code object, then READY:
CODE <address> <name hex> <filename hex> <co_firstlineno>
"""
from __future__ import print_function

import binascii
import sys


def plain_function(a):
    return a + 1


functions = [plain_function]
if sys.version_info[0] >= 3:
    # Latin-1 (kind 1), BMP (kind 2) and astral (kind 4) names, with no
    # cached UTF-8 copy: code objects' names are never encoded.
    source = (
        u"def caf\u00e9_d\u00e9j\u00e0(a):\n    return a\n"
        u"def \u540d\u524d_function(a):\n    return a\n"
        u"def astral_\U00020000(a):\n    return a\n"
    )
    namespace = {}
    exec(compile(source, __file__, "exec"), namespace)
    functions += [namespace[n] for n in sorted(namespace) if n != "__builtins__"]


def hexed(text):
    if not isinstance(text, bytes):
        text = text.encode("utf-8")
    return binascii.hexlify(text).decode("ascii")


for function in functions:
    code = function.__code__
    print("CODE", id(code), hexed(code.co_name), hexed(code.co_filename), code.co_firstlineno)
print("READY")
sys.stdout.flush()
sys.stdin.readline()
