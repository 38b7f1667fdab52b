package server

// This file is caller authentication: who the tenant of a call is.
//
// Two ways in, both optional:
//   - a bearer token, "authorization: Bearer TOKEN", looked up in the
//     tokens file (auth.tokens_file), which holds SHA-256 hashes only;
//   - a client certificate verified against tls.client_ca, whose subject
//     common name is the tenant.
//
// Precedence: a call that carries an authorization header is judged by its
// token alone, even on a connection with a verified client certificate; a
// bad token is refused, never rescued by the certificate. Tokens are per
// call and certificates per connection, so this lets a gateway that holds
// one certificate forward calls for several tenants, each with its own
// token, while a wrong token is still reported as wrong. Without tokens
// configured an authorization header is ignored: it may be meant for a
// proxy, and the certificate is what identifies the caller then.
//
// With neither tokens nor a client CA configured every caller is the tenant
// "anonymous". Health and reflection never need credentials: load
// balancers probe health, and grpcurl lists services, without any.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// AnonymousTenant is the tenant of every call when no authentication is
// configured.
const AnonymousTenant = "anonymous"

type tenantKey struct{}

// TenantFromContext returns the tenant the auth interceptor established for
// the call, or AnonymousTenant.
func TenantFromContext(ctx context.Context) string {
	if t, ok := ctx.Value(tenantKey{}).(string); ok {
		return t
	}
	return AnonymousTenant
}

// withTenant records the call's tenant, for the handler and for the call's
// log line (the logging interceptor runs outside auth and sees only what is
// handed back to it).
func withTenant(ctx context.Context, tenant string) context.Context {
	if f := callFieldsFrom(ctx); f != nil {
		f.setTenant(tenant)
	}
	return context.WithValue(ctx, tenantKey{}, tenant)
}

// TokenSet maps SHA-256 hashes of bearer tokens to tenants.
type TokenSet struct {
	entries []tokenEntry
}

type tokenEntry struct {
	hash   [sha256.Size]byte
	tenant string
}

// Len is the number of tokens in the set.
func (s *TokenSet) Len() int { return len(s.entries) }

// Lookup returns the tenant of token. It compares the token's hash with
// every entry in constant time and does not stop at a match, so the time it
// takes says nothing about which entry, if any, matched.
func (s *TokenSet) Lookup(token string) (tenant string, ok bool) {
	sum := sha256.Sum256([]byte(token))
	found, at := 0, 0
	for i := range s.entries {
		eq := subtle.ConstantTimeCompare(sum[:], s.entries[i].hash[:])
		at = subtle.ConstantTimeSelect(eq, i, at)
		found |= eq
	}
	if found == 0 {
		return "", false
	}
	return s.entries[at].tenant, true
}

// LoadTokens reads a tokens file: one "TENANT SHA256-HEX-OF-TOKEN" per
// line, "#" to the end of a line is a comment, blank lines are allowed. A
// tenant may have several tokens (rotation); one token may not name two
// tenants. The file must not be readable by group or others: it is not a
// secret, but it decides which credential is which tenant, and who may read
// it learns whose token hash to attack.
func LoadTokens(path string) (*TokenSet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth tokens: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("auth tokens: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("auth tokens: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("auth tokens: %s has mode %04o: it maps credentials to tenants, so group and others must not read it (chmod 600)",
			path, perm)
	}
	return parseTokens(path, f)
}

// parseTokens parses a tokens file read from r; name is for messages. A
// message never quotes a line: someone may have pasted a token itself.
func parseTokens(name string, r io.Reader) (*TokenSet, error) {
	set := &TokenSet{}
	type first struct {
		line   int
		tenant string
	}
	seen := map[[sha256.Size]byte]first{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("auth tokens: %s:%d: want \"TENANT SHA256-HEX-OF-TOKEN\", got %d fields", name, n, len(fields))
		}
		tenant, digest := fields[0], fields[1]
		if len(digest) != 2*sha256.Size {
			return nil, fmt.Errorf("auth tokens: %s:%d: the hash must be %d hex digits (the SHA-256 of the token, not the token), got %d characters",
				name, n, 2*sha256.Size, len(digest))
		}
		var e tokenEntry
		if _, err := hex.Decode(e.hash[:], []byte(digest)); err != nil {
			return nil, fmt.Errorf("auth tokens: %s:%d: the hash is not hex", name, n)
		}
		e.tenant = tenant
		if prev, dup := seen[e.hash]; dup {
			if prev.tenant != tenant {
				return nil, fmt.Errorf("auth tokens: %s:%d: the same token hash is given to tenant %q at line %d; one token names one tenant",
					name, n, prev.tenant, prev.line)
			}
			continue // a repeated line: harmless
		}
		seen[e.hash] = first{n, tenant}
		set.entries = append(set.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth tokens: %s: %w", name, err)
	}
	if len(set.entries) == 0 {
		return nil, fmt.Errorf("auth tokens: %s: no tokens: every call would be refused", name)
	}
	return set, nil
}

// Authenticator establishes the tenant of each call.
type Authenticator struct {
	tokens      *TokenSet
	clientCerts bool
}

// NewAuthenticator authenticates with tokens (nil: no bearer tokens) and,
// when clientCerts is set (a client CA is configured), with verified client
// certificates. With neither, every caller is AnonymousTenant.
func NewAuthenticator(tokens *TokenSet, clientCerts bool) *Authenticator {
	return &Authenticator{tokens: tokens, clientCerts: clientCerts}
}

// required reports whether calls must carry credentials.
func (a *Authenticator) required() bool { return a.tokens != nil || a.clientCerts }

// UnaryServerInterceptor authenticates unary calls but health and
// reflection.
func (a *Authenticator) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(a.authenticate), selector.MatchFunc(needsCredentials))
}

// StreamServerInterceptor authenticates streaming calls but health and
// reflection.
func (a *Authenticator) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(auth.StreamServerInterceptor(a.authenticate), selector.MatchFunc(needsCredentials))
}

// needsCredentials is false for the services a caller must reach without
// any: health (load balancers, kubelet probes) and reflection (grpcurl).
func needsCredentials(_ context.Context, c interceptors.CallMeta) bool {
	return !publicService(c.Service)
}

func publicService(service string) bool {
	return service == "grpc.health.v1.Health" || strings.HasPrefix(service, "grpc.reflection.")
}

// authenticate is the auth.AuthFunc. Its messages are short and never
// quote what the caller sent.
func (a *Authenticator) authenticate(ctx context.Context) (context.Context, error) {
	if !a.required() {
		return withTenant(ctx, AnonymousTenant), nil
	}
	if a.tokens != nil {
		if vals := metadata.ValueFromIncomingContext(ctx, "authorization"); len(vals) > 0 {
			tenant, err := a.bearer(vals)
			if err != nil {
				return nil, err
			}
			return withTenant(ctx, tenant), nil
		}
	}
	if a.clientCerts {
		if cn, ok := certCommonName(ctx); ok {
			if cn == "" {
				return nil, unauthenticated("client certificate has no subject common name to name the tenant")
			}
			return withTenant(ctx, cn), nil
		}
	}
	if a.tokens != nil {
		return nil, unauthenticated("missing credentials: send the metadata \"authorization: Bearer TOKEN\"")
	}
	return nil, unauthenticated("missing credentials: a client certificate is required")
}

func (a *Authenticator) bearer(vals []string) (string, error) {
	if len(vals) != 1 {
		return "", unauthenticated("malformed authorization metadata: more than one value")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", unauthenticated("malformed authorization metadata: want \"Bearer TOKEN\"")
	}
	tenant, ok := a.tokens.Lookup(token)
	if !ok {
		return "", unauthenticated("invalid bearer token")
	}
	return tenant, nil
}

// certCommonName returns the subject common name of the connection's
// verified client certificate; ok is false when the connection has none.
// Only a verified chain counts: a certificate the TLS layer did not check
// against the client CA names nobody.
func certCommonName(ctx context.Context) (cn string, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found {
		return "", false
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	return info.State.VerifiedChains[0][0].Subject.CommonName, true
}
