package client_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// addr is where the examples' hourglassd listens: a stand-in (fakeServer)
// that TestMain starts on loopback.
var addr string

func TestMain(m *testing.M) {
	f, stop, err := serveFake(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the examples' server:", err)
		os.Exit(1)
	}
	addr = f.addr
	code := m.Run()
	stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
