package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// tokenHash is the tokens-file form of token.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func TestParseTokens(t *testing.T) {
	const pasted = "s3cr3t-token-pasted-by-mistake"
	tests := []struct {
		name    string
		file    string
		want    map[string]string // token -> tenant; nil when an error is wanted
		wantErr string            // part of the error, which names file:line
	}{
		{name: "good", file: "acme " + tokenHash("t1") + "\nglobex " + tokenHash("t2") + "\n",
			want: map[string]string{"t1": "acme", "t2": "globex"}},
		{name: "comments, blank lines, tabs, upper-case hex",
			file: "# tenants\n\n  acme\t" + strings.ToUpper(tokenHash("t1")) + "   # rotated 2026-01\n\t\n#globex " + tokenHash("t2") + "\n",
			want: map[string]string{"t1": "acme"}},
		{name: "a tenant with two tokens, a repeated line",
			file: "acme " + tokenHash("t1") + "\nacme " + tokenHash("t2") + "\nacme " + tokenHash("t1") + "\n",
			want: map[string]string{"t1": "acme", "t2": "acme"}},
		{name: "one field", file: "acme " + tokenHash("t1") + "\nglobex\n", wantErr: "tokens:2: want \"TENANT SHA256-HEX-OF-TOKEN\", got 1 fields"},
		{name: "three fields", file: "acme " + tokenHash("t1") + " extra\n", wantErr: "tokens:1: want"},
		{name: "a token instead of its hash", file: "\nacme " + pasted + "\n", wantErr: "tokens:2: the hash must be 64 hex digits"},
		{name: "wrong length", file: "acme " + tokenHash("t1")[:62] + "\n", wantErr: "got 62 characters"},
		{name: "bad hex", file: "acme " + strings.Repeat("zz", 32) + "\n", wantErr: "tokens:1: the hash is not hex"},
		{name: "one hash, two tenants", file: "acme " + tokenHash("t1") + "\n\nglobex " + tokenHash("t1") + "\n",
			wantErr: "tokens:3: the same token hash is given to tenant \"acme\" at line 1"},
		{name: "no tokens", file: "# nothing yet\n", wantErr: "no tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := parseTokens("tokens", strings.NewReader(tt.file))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseTokens(%q) = %v; want an error containing %q", tt.file, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), pasted) {
					t.Errorf("parseTokens error %q quotes the line; it may hold a token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseTokens(%q) = %v; want no error", tt.file, err)
			}
			for token, tenant := range tt.want {
				if got, ok := set.Lookup(token); !ok || got != tenant {
					t.Errorf("Lookup(%q) = %q, %v; want %q, true", token, got, ok, tenant)
				}
			}
			if got, ok := set.Lookup("not-a-token"); ok {
				t.Errorf("Lookup(unknown) = %q, true; want false", got)
			}
			if got, ok := set.Lookup(""); ok {
				t.Errorf("Lookup(\"\") = %q, true; want false", got)
			}
		})
	}
}

func TestLoadTokensMode(t *testing.T) {
	content := []byte("acme " + tokenHash("t1") + "\n")
	tests := []struct {
		mode    os.FileMode
		wantErr string
	}{
		{0o600, ""},
		{0o400, ""},
		{0o640, "group and others must not read it"},
		{0o604, "group and others must not read it"},
		{0o644, "mode 0644"},
		{0o620, "group and others must not read it"}, // writable by group is worse
	}
	for _, tt := range tests {
		path := filepath.Join(t.TempDir(), "tokens")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tt.mode); err != nil {
			t.Fatal(err)
		}
		set, err := LoadTokens(path)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("LoadTokens(mode %04o) = %v; want no error", tt.mode, err)
		case tt.wantErr == "" && set.Len() != 1:
			t.Errorf("LoadTokens(mode %04o) has %d tokens; want 1", tt.mode, set.Len())
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("LoadTokens(mode %04o) = %v; want an error containing %q", tt.mode, err, tt.wantErr)
		}
	}
	if _, err := LoadTokens(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("LoadTokens(missing file) = nil; want an error")
	}
	if _, err := LoadTokens(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("LoadTokens(a directory) = %v; want \"not a regular file\"", err)
	}
}

func TestTenantFromContextDefault(t *testing.T) {
	if got := TenantFromContext(context.Background()); got != AnonymousTenant {
		t.Errorf("TenantFromContext(no auth) = %q; want %q", got, AnonymousTenant)
	}
}

// echoService is a GenerateService that answers with the tenant it sees,
// in GenerateStats.worker_id (unary) or a Started event (stream).
type echoService struct {
	hourglassv1.UnimplementedGenerateServiceServer
	// generate, if set, runs before Generate answers.
	generate func(ctx context.Context, req *hourglassv1.GenerateRequest) error
}

func (s *echoService) Generate(ctx context.Context, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	if s.generate != nil {
		if err := s.generate(ctx, req); err != nil {
			return nil, err
		}
	}
	return &hourglassv1.GenerateResponse{Stats: &hourglassv1.GenerateStats{WorkerId: TenantFromContext(ctx)}}, nil
}

func (s *echoService) GenerateStream(req *hourglassv1.GenerateRequest, stream hourglassv1.GenerateService_GenerateStreamServer) error {
	if s.generate != nil {
		if err := s.generate(stream.Context(), req); err != nil {
			return err
		}
	}
	return stream.Send(&hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Started_{
		Started: &hourglassv1.GenerateEvent_Started{WorkerId: TenantFromContext(stream.Context())}}})
}

func (s *echoService) GetServerInfo(ctx context.Context, _ *hourglassv1.GetServerInfoRequest) (*hourglassv1.GetServerInfoResponse, error) {
	return &hourglassv1.GetServerInfoResponse{Version: TenantFromContext(ctx)}, nil
}

// serveEcho serves svc, health (SERVING) and reflection on 127.0.0.1:0
// and returns the address; the server stops when the test ends.
func serveEcho(t *testing.T, svc hourglassv1.GenerateServiceServer, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	hourglassv1.RegisterGenerateServiceServer(gs, svc)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		hs.Shutdown()
		gs.Stop()
		<-done
	})
	return lis.Addr().String()
}

func dialEcho(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// authCall is one kind of call an auth test makes; it returns the tenant
// the server saw ("" for health and reflection, which do not say).
type authCall struct {
	name string
	do   func(ctx context.Context, cc *grpc.ClientConn) (string, error)
}

var (
	callGenerate = authCall{"Generate", func(ctx context.Context, cc *grpc.ClientConn) (string, error) {
		resp, err := hourglassv1.NewGenerateServiceClient(cc).Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "a cat"})
		return resp.GetStats().GetWorkerId(), err
	}}
	callStream = authCall{"GenerateStream", func(ctx context.Context, cc *grpc.ClientConn) (string, error) {
		stream, err := hourglassv1.NewGenerateServiceClient(cc).GenerateStream(ctx, &hourglassv1.GenerateRequest{Prompt: "a cat"})
		if err != nil {
			return "", err
		}
		ev, err := stream.Recv()
		return ev.GetStarted().GetWorkerId(), err
	}}
	callHealth = authCall{"Health.Check", func(ctx context.Context, cc *grpc.ClientConn) (string, error) {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return "", err
	}}
	callReflection = authCall{"ServerReflection", func(ctx context.Context, cc *grpc.ClientConn) (string, error) {
		stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err != nil {
			return "", err
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			return "", err
		}
		_, err = stream.Recv()
		_ = stream.CloseSend()
		return "", err
	}}
)

func authInterceptors(a *Authenticator) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(a.StreamServerInterceptor()),
	}
}

func withAuthorization(ctx context.Context, value string) context.Context {
	if value == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", value)
}

func TestAuthTokens(t *testing.T) {
	const good, bad = "good-token-0123456789", "wrong-token-0123456789"
	tokens, err := parseTokens("tokens", strings.NewReader("acme "+tokenHash(good)+"\nglobex "+tokenHash("other")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cc := dialEcho(t, serveEcho(t, &echoService{}, authInterceptors(NewAuthenticator(tokens, false))...), nil)
	tests := []struct {
		call       authCall
		auth       string
		wantCode   codes.Code
		wantTenant string
	}{
		{callGenerate, "", codes.Unauthenticated, ""},
		{callGenerate, "Bearer " + bad, codes.Unauthenticated, ""},
		{callGenerate, "Basic " + good, codes.Unauthenticated, ""},
		{callGenerate, "Bearer", codes.Unauthenticated, ""},
		{callGenerate, good, codes.Unauthenticated, ""},
		{callGenerate, "Bearer " + good, codes.OK, "acme"},
		{callGenerate, "bearer " + good, codes.OK, "acme"}, // the scheme is case-insensitive (RFC 7235)
		{callGenerate, "Bearer other", codes.OK, "globex"},
		{callStream, "", codes.Unauthenticated, ""},
		{callStream, "Bearer " + bad, codes.Unauthenticated, ""},
		{callStream, "Bearer " + good, codes.OK, "acme"},
		{callHealth, "", codes.OK, ""},
		{callHealth, "Bearer " + bad, codes.OK, ""}, // health does not even look
		{callReflection, "", codes.OK, ""},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(withAuthorization(context.Background(), tt.auth), 10*time.Second)
		tenant, err := tt.call.do(ctx, cc)
		cancel()
		st := status.Convert(err)
		if st.Code() != tt.wantCode || tenant != tt.wantTenant {
			t.Errorf("%s(authorization %q) = tenant %q, %v; want tenant %q, %v", tt.call.name, tt.auth, tenant, st.Code(), tt.wantTenant, tt.wantCode)
		}
		if strings.Contains(st.Message(), good) || strings.Contains(st.Message(), bad) {
			t.Errorf("%s(authorization %q) message %q echoes the token", tt.call.name, tt.auth, st.Message())
		}
	}
}

func TestAuthTwoAuthorizationValues(t *testing.T) {
	tokens, err := parseTokens("tokens", strings.NewReader("acme "+tokenHash("t1")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cc := dialEcho(t, serveEcho(t, &echoService{}, authInterceptors(NewAuthenticator(tokens, false))...), nil)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer t1", "authorization", "Bearer t1")
	if _, err := callGenerate.do(ctx, cc); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Generate(two authorization values) = %v; want Unauthenticated", err)
	}
}

func TestAuthNoneConfigured(t *testing.T) {
	cc := dialEcho(t, serveEcho(t, &echoService{}, authInterceptors(NewAuthenticator(nil, false))...), nil)
	for _, call := range []authCall{callGenerate, callStream} {
		tenant, err := call.do(withAuthorization(context.Background(), "Bearer whatever"), cc)
		if err != nil || tenant != AnonymousTenant {
			t.Errorf("%s(no auth configured) = %q, %v; want %q, OK", call.name, tenant, err, AnonymousTenant)
		}
	}
}

// testPKI is a throwaway CA with a server certificate for 127.0.0.1 and
// client certificates.
type testPKI struct {
	pool   *x509.CertPool
	server tls.Certificate
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hourglass test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{pool: x509.NewCertPool(), caCert: ca, caKey: key, serial: 1}
	p.pool.AddCert(ca)
	p.server = p.issue(t, "localhost", x509.ExtKeyUsageServerAuth)
	return p
}

func (p *testPKI) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAuthClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	tokens, err := parseTokens("tokens", strings.NewReader("acme "+tokenHash("t1")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pki.server},
		ClientCAs:    pki.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	clientTLS := func(cn string) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{
			RootCAs: pki.pool, Certificates: []tls.Certificate{pki.issue(t, cn, x509.ExtKeyUsageClientAuth)},
			MinVersion: tls.VersionTLS13,
		})
	}
	tests := []struct {
		name       string
		tokens     *TokenSet
		cn         string
		call       authCall
		auth       string
		wantCode   codes.Code
		wantTenant string
	}{
		{name: "certificate names the tenant", cn: "initech", call: callGenerate, wantTenant: "initech"},
		{name: "stream too", cn: "initech", call: callStream, wantTenant: "initech"},
		{name: "authorization ignored without tokens", cn: "initech", call: callGenerate, auth: "Bearer nope", wantTenant: "initech"},
		{name: "no common name", cn: "", call: callGenerate, wantCode: codes.Unauthenticated},
		{name: "health", cn: "", call: callHealth},
		{name: "tokens too: certificate alone", tokens: tokens, cn: "initech", call: callGenerate, wantTenant: "initech"},
		{name: "tokens too: a valid token wins", tokens: tokens, cn: "initech", call: callGenerate, auth: "Bearer t1", wantTenant: "acme"},
		{name: "tokens too: a bad token is refused", tokens: tokens, cn: "initech", call: callGenerate, auth: "Bearer t2",
			wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serveEcho(t, &echoService{}, append(authInterceptors(NewAuthenticator(tt.tokens, true)), grpc.Creds(serverTLS))...)
			cc := dialEcho(t, addr, clientTLS(tt.cn))
			ctx, cancel := context.WithTimeout(withAuthorization(context.Background(), tt.auth), 10*time.Second)
			defer cancel()
			tenant, err := tt.call.do(ctx, cc)
			if code := status.Code(err); code != tt.wantCode || tenant != tt.wantTenant {
				t.Errorf("%s(cn %q, authorization %q) = tenant %q, %v (%v); want tenant %q, %v",
					tt.call.name, tt.cn, tt.auth, tenant, code, err, tt.wantTenant, tt.wantCode)
			}
		})
	}
}

// A client certificate on a connection whose certificates the server did
// not verify names nobody: auth must not trust an unverified chain.
func TestAuthUnverifiedCertificateNamesNobody(t *testing.T) {
	pki := newTestPKI(t)
	serverTLS := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pki.server},
		ClientAuth:   tls.RequireAnyClientCert, // asks for one, checks nothing
		MinVersion:   tls.VersionTLS13,
	})
	addr := serveEcho(t, &echoService{}, append(authInterceptors(NewAuthenticator(nil, true)), grpc.Creds(serverTLS))...)
	cc := dialEcho(t, addr, credentials.NewTLS(&tls.Config{
		RootCAs: pki.pool, Certificates: []tls.Certificate{pki.issue(t, "mallory", x509.ExtKeyUsageClientAuth)},
		MinVersion: tls.VersionTLS13,
	}))
	if tenant, err := callGenerate.do(context.Background(), cc); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Generate(unverified certificate) = %q, %v; want Unauthenticated", tenant, err)
	}
}
