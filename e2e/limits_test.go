package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// peakRSS is a process's peak resident set (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// A flood of oversized requests: 300 concurrent callers on 30 connections,
// each sending five Generate calls of 3.9 MB (a prompt a thousand times
// the 4,000 characters the API allows). The transport refuses each with
// RESOURCE_EXHAUSTED before decoding it, hourglassd's memory stays
// bounded (peak RSS under 256 MiB), and a normal call afterwards succeeds.
func TestOversizedRequestFlood(t *testing.T) {
	const (
		callers     = 300
		connections = 30
		perCaller   = 5
		rssBound    = 256 << 20
	)
	d := startDaemon(t, "")
	// One encoded message shared by every call, so that the test process
	// itself stays small.
	big, err := proto.Marshal(&hourglassv1.GenerateRequest{Prompt: strings.Repeat("a", 3_900_000), Seed: proto.Uint64(1)})
	if err != nil {
		t.Fatal(err)
	}
	var conns []*grpc.ClientConn
	for range connections {
		c, err := grpc.NewClient(d.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	var mu sync.Mutex
	got := map[string]int{}
	var took []time.Duration
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perCaller {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				start := time.Now()
				err := abuseRawCall(ctx, conns[i%connections], hourglassv1.GenerateService_Generate_FullMethodName, big)
				cancel()
				st := status.Convert(err)
				mu.Lock()
				got[fmt.Sprintf("%v: %s", st.Code(), firstWords(st.Message(), 6))]++
				took = append(took, time.Since(start))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	want := fmt.Sprintf("%v: %s", codes.ResourceExhausted, "grpc: received message larger than max")
	if len(got) != 1 || got[want] != callers*perCaller {
		t.Errorf("answers: %v; want all %d %q", got, callers*perCaller, want)
	}
	slices.Sort(took)
	rss := peakRSS(t, d.cmd.Process.Pid)
	t.Logf("%d oversized calls: answered in p50 %v, p99 %v, max %v; hourglassd peak RSS %d MiB",
		len(took), took[len(took)/2].Round(time.Millisecond), took[len(took)*99/100].Round(time.Millisecond),
		took[len(took)-1].Round(time.Millisecond), rss>>20)
	if rss > rssBound {
		t.Errorf("hourglassd's peak RSS %d MiB; want under %d MiB", rss>>20, rssBound>>20)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.client.Generate(ctx, smallRequest("after the flood", 3)); err != nil {
		t.Fatalf("Generate after the flood = %v; want OK", err)
	}
}

func firstWords(s string, n int) string {
	w := strings.Fields(s)
	return strings.Join(w[:min(n, len(w))], " ")
}

// A client that connects and never speaks HTTP/2 is disconnected after
// limits.handshake_timeout, and one that stops mid-preface likewise.
func TestStalledClientIsCut(t *testing.T) {
	d := startDaemon(t, "limits:\n  handshake_timeout: 500ms\n")
	for _, tt := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"half a preface", []byte("PRI * HTTP/2.0\r\n")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", d.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			// Wait for the server to close: a read that ends with EOF
			// (or a reset) long before this generous deadline.
			if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server kept a stalled connection open for 30 s; want it closed after the handshake timeout")
			}
			t.Logf("closed after %v (%v)", time.Since(start).Round(time.Millisecond), err)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.client.Generate(ctx, smallRequest("after the stalls", 3)); err != nil {
		t.Fatalf("Generate after the stalled clients = %v; want OK", err)
	}
}
