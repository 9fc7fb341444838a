"""Spins in spin(), called from outer(), called from the module, holding
the GIL, so the thread state and frame chain can be walked from outside;
a second thread sleeps in sleeper() with the GIL released, so its thread
state is found only in the interpreter's thread list.
Read by walk_tests.rs: prints the lines it expects, the threads' idents
(their pthread_self(), the thread states' thread_id), then READY.
"""
from __future__ import print_function

import sys
import threading
import time


def spin():
    while True:
        pass


def outer():
    spin()


def sleeper():
    time.sleep(3600)


thread = threading.Thread(target=sleeper)
thread.daemon = True
thread.start()
# spin's loop lines, outer's call line, the module's call line.
print("LINES", spin.__code__.co_firstlineno + 1, spin.__code__.co_firstlineno + 2,
      outer.__code__.co_firstlineno + 1, 39)
# The main thread's ident, the sleeping thread's, sleeper's line.
main_ident = getattr(threading, "main_thread", threading.current_thread)().ident
print("THREADS", main_ident, thread.ident, sleeper.__code__.co_firstlineno + 1)
print("READY")
sys.stdout.flush()
outer()
