"""Spins in spin(), called from outer(), called from the module, holding
the GIL, so the thread state and frame chain can be walked from outside.
Read by walk_tests.rs: prints the lines it expects, then READY.
"""
from __future__ import print_function

import sys


def spin():
    while True:
        pass


def outer():
    spin()


# spin's loop lines, outer's call line, the module's call line.
print("LINES", spin.__code__.co_firstlineno + 1, spin.__code__.co_firstlineno + 2,
      outer.__code__.co_firstlineno + 1, 24)
print("READY")
sys.stdout.flush()
outer()
