package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// transportCredentials turns the TLS options into gRPC transport
// credentials: TLS with the system's roots unless told otherwise.
func (o *options) transportCredentials() (credentials.TransportCredentials, error) {
	if o.insecure {
		if o.tlsRequested() {
			return nil, errors.New("client: WithInsecure cannot be combined with WithTLSConfig, WithCAFile or WithClientCertificate")
		}
		if o.token != "" && !o.tokenPlaintext {
			return nil, errors.New("client: WithToken sends the token only over TLS; with WithInsecure add AllowTokenOverPlaintext (loopback, or a mesh sidecar that encrypts)")
		}
		return insecure.NewCredentials(), nil
	}
	cfg := o.tlsConfig
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, fmt.Errorf("client: CA file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client: CA file %s holds no PEM certificate", o.caFile)
		}
		cfg.RootCAs = roots
	}
	if o.certFile != "" || o.keyFile != "" {
		if o.certFile == "" || o.keyFile == "" {
			return nil, errors.New("client: WithClientCertificate needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, fmt.Errorf("client: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// bearerToken is the per-call credential of WithToken.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if b.requireTLS {
		// grpc-go already refuses a plain-text channel with credentials
		// that require security; this also catches custom transport
		// credentials that report no security.
		ri, _ := credentials.RequestInfoFromContext(ctx)
		if err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity); err != nil {
			return nil, fmt.Errorf("client: refusing to send the token over this connection: %w", err)
		}
	}
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }
