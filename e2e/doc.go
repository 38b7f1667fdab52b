// Package e2e holds end-to-end tests: they build the real binaries
// (hourglassd, hourglass-worker, hourglass), start them as processes on
// loopback and talk gRPC to them, as a user would. It has no non-test code.
package e2e
