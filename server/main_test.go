package server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a
// server that is not shut down, a client connection not closed, a deadline
// timer not stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
