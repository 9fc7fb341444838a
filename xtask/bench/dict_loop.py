# cargo xtask bench-python: the loop the issue measures, a dict holding a
# str and a 3-item list per iteration. Waits for a line on stdin (the
# tracer attaches meanwhile), runs, prints ns per iteration. Python 2 and 3.
import sys
import time

iterations = int(sys.argv[1])
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
keep = None
start = time.time()
for i in range(iterations):
    keep = {"name": "item-%d" % i, "values": [i, i + 1, i + 2]}
elapsed = time.time() - start
sys.stdout.write("%.1f\n" % (elapsed * 1e9 / iterations))
sys.stdout.flush()
