// The Go allocation loop of `cargo xtask bench-go`: after a line on
// stdin, N allocations (64 B and 1 KiB, alternating) into a ring of 20,000
// live objects, so that the collector keeps running; prints the time per
// allocation in ns. It does not import runtime/pprof: its heap profile is
// off unless leaktrace turns it on.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"
)

var ring [20000][]byte

//go:noinline
func allocate(i int) []byte {
	if i%2 == 0 {
		return make([]byte, 64)
	}
	return make([]byte, 1024)
}

func main() {
	n, err := strconv.Atoi(os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	start := time.Now()
	for i := 0; i < n; i++ {
		b := allocate(i)
		b[0] = byte(i)
		ring[i%len(ring)] = b
	}
	fmt.Printf("%.1f\n", float64(time.Since(start).Nanoseconds())/float64(n))
}
