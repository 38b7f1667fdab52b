package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// A job that fails UNAVAILABLE before its first image is run again, with
// the same seed, and the user sees why.
func TestGenerateRetry(t *testing.T) {
	fake, addr := startServer(t)
	dir := t.TempDir()
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "crash once", "-o", filepath.Join(dir, "x.png"))
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if fake.calls.Load() != 2 {
		t.Errorf("server got %d calls, want 2", fake.calls.Load())
	}
	if !strings.Contains(r.stderr, "retrying: attempt 2, after UNAVAILABLE: worker crashed (WORKER_CRASHED)\n") {
		t.Errorf("stderr lacks the retry line:\n%s", r.stderr)
	}
	seeds := regexp.MustCompile(`started: worker w\d, seed (\d+)`).FindAllStringSubmatch(r.stderr, -1)
	if len(seeds) != 2 || seeds[0][1] != seeds[1][1] {
		t.Errorf("started lines %q, want two with one seed:\n%s", seeds, r.stderr)
	}
	// Progress starts over after the retry, so its lines come again.
	if strings.Count(r.stderr, "queued: position 0") != 2 || !strings.Contains(r.stderr, "progress: 100%") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}

// generate balances over every --addr, and skips a server whose health is
// not SERVING.
func TestGenerateSkipsNotServing(t *testing.T) {
	draining, addr1 := startServer(t)
	draining.health.SetServingStatus("hourglass.v1.GenerateService", healthpb.HealthCheckResponse_NOT_SERVING)
	serving, addr2 := startServer(t)
	for range 3 {
		r := runCLI(t.Context(), "generate", "--addr", addr1, "--addr", addr2, "--prompt", "cat", "-o", filepath.Join(t.TempDir(), "x.png"))
		if r.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
	}
	if draining.calls.Load() != 0 || serving.calls.Load() != 3 {
		t.Errorf("calls: %d to the NOT_SERVING server, %d to the other; want 0 and 3", draining.calls.Load(), serving.calls.Load())
	}
}

func TestHealthSeveral(t *testing.T) {
	_, up := startServer(t)
	draining, down := startServer(t)
	draining.health.SetServingStatus("hourglass.v1.GenerateService", healthpb.HealthCheckResponse_NOT_SERVING)
	dead := deadAddr(t)
	tests := []struct {
		addrs      []string
		wantCode   int
		wantStdout []string // lines, as patterns
		wantStderr string
	}{
		{[]string{up, up}, 0, []string{up + ` +SERVING`, up + ` +SERVING`}, ""},
		{[]string{up, down, dead}, exitNotServing,
			[]string{up + ` +SERVING`, down + ` +NOT_SERVING`, dead + ` +UNAVAILABLE: .+`}, "hourglass: 2 of 3 servers failed\n"},
		{[]string{dead, down}, 24, []string{dead + ` +UNAVAILABLE: .+`, down + ` +NOT_SERVING`}, "hourglass: 2 of 2 servers failed\n"},
	}
	for _, tt := range tests {
		r := runCLI(t.Context(), "health", "--addr", strings.Join(tt.addrs, ","), "--service", "hourglass.v1.GenerateService")
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		ok := r.code == tt.wantCode && len(lines) == len(tt.wantStdout) && r.stderr == tt.wantStderr
		for i := 0; ok && i < len(lines); i++ {
			ok = regexp.MustCompile("^" + tt.wantStdout[i] + "$").MatchString(lines[i])
		}
		if !ok {
			t.Errorf("health %v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", tt.addrs, r.code, tt.wantCode, r.stdout, r.stderr)
		}
	}
}

func TestInfoSeveral(t *testing.T) {
	_, up := startServer(t)
	dead := deadAddr(t)
	r := runCLI(t.Context(), "info", "--addr", up, "--addr", dead)
	if r.code != 24 || r.stderr != "hourglass: 1 of 2 servers failed\n" {
		t.Errorf("exit %d, want 24 (UNAVAILABLE); stderr:\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"== " + up + "\nversion:  v0.0.0-test\n", "\n\n== " + dead + "\nerror:    UNAVAILABLE: "} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}

	r = runCLI(t.Context(), "info", "--addr", up+","+dead, "--json")
	var got map[string]struct {
		QueueDepth int `json:"queue_depth"`
		Error      *struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 24 {
		t.Fatalf("info --json: exit %d, %v:\n%s", r.code, err, r.stdout)
	}
	if got[up].QueueDepth != 2 || got[up].Error != nil || got[dead].Error == nil || got[dead].Error.Code != "UNAVAILABLE" {
		t.Errorf("info --json = %+v", got)
	}
}

func TestConnFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  string // HOURGLASS_TOKEN
		want string
	}{
		{"certificate without key", []string{"--tls-cert", "c.pem"}, "", "--tls-cert and --tls-key go together"},
		{"key without certificate", []string{"--tls-key", "k.pem"}, "", "--tls-cert and --tls-key go together"},
		{"token over plain text", []string{"--token", "t"}, "", "is sent only over TLS"},
		{"token from the environment over plain text", nil, "t", "is sent only over TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tt.env)
			_, err := parseGenerateArgs(append([]string{"--prompt", "x"}, tt.args...), io.Discard)
			if exitStatus(err) != exitUsage || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v (exit %d), want a usage error containing %q", err, exitStatus(err), tt.want)
			}
		})
	}
}

func TestToken(t *testing.T) {
	fake, addr := startServer(t)
	tests := []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"flag", []string{"--token", "s3cret", "--allow-plaintext-token"}, "", "Bearer s3cret"},
		{"environment", []string{"--allow-plaintext-token"}, "from-env", "Bearer from-env"},
		{"flag beats environment", []string{"--token", "s3cret", "--allow-plaintext-token"}, "from-env", "Bearer s3cret"},
		{"none", nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tt.env)
			args := append([]string{"generate", "--addr", addr, "--prompt", "cat", "-o", filepath.Join(t.TempDir(), "x.png")}, tt.args...)
			if r := runCLI(t.Context(), args...); r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			if got := fake.auth.Load(); got != tt.want {
				t.Errorf("server saw authorization %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTLSFlags(t *testing.T) {
	certFile, keyFile := selfSignedCert(t)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	fake, addr := startServer(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantAuth string
	}{
		{"CA file", []string{"--tls-ca", certFile}, 0, ""},
		{"CA file and token", []string{"--tls-ca", certFile, "--token", "s3cret"}, 0, "Bearer s3cret"},
		{"system roots do not know it", []string{"--tls"}, 24, ""},
		{"plain text to a TLS server", nil, 24, ""},
		{"missing CA file", []string{"--tls-ca", certFile + ".missing"}, exitLocal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tokenEnv, "")
			fake.auth.Store("")
			args := append([]string{"generate", "--addr", addr, "--prompt", "cat", "-o", filepath.Join(t.TempDir(), "x.png")}, tt.args...)
			r := runCLI(t.Context(), args...)
			if r.code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", r.code, tt.wantCode, r.stderr)
			}
			if got := fake.auth.Load(); got != tt.wantAuth {
				t.Errorf("server saw authorization %q, want %q", got, tt.wantAuth)
			}
		})
	}
}

// selfSignedCert writes a self-signed certificate for 127.0.0.1, which is
// its own CA, and its key.
func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hourglassd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
