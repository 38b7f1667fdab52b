package client_test

import (
	"testing"

	"github.com/hourglass-dev/hourglass/client"
	"github.com/hourglass-dev/hourglass/server"
)

// The client's reasons are the server's: server/status.go is where they
// are made, and a caller switches on the client's copies.
func TestReasonsMatchServer(t *testing.T) {
	tests := []struct{ client, server string }{
		{client.ErrorDomain, server.ErrorDomain},
		{client.ReasonDeadlineExceeded, server.ReasonDeadlineExceeded},
		{client.ReasonDeadlineTooShort, server.ReasonDeadlineTooShort},
		{client.ReasonDeadlineUnreachable, server.ReasonDeadlineUnreachable},
		{client.ReasonQueueFull, server.ReasonQueueFull},
		{client.ReasonOverloaded, server.ReasonOverloaded},
		{client.ReasonTenantQuota, server.ReasonTenantQuota},
		{client.ReasonOutOfMemory, server.ReasonOutOfMemory},
		{client.ReasonWorkerCrashed, server.ReasonWorkerCrashed},
		{client.ReasonDraining, server.ReasonDraining},
	}
	for _, tt := range tests {
		if tt.client != tt.server {
			t.Errorf("client has %q where the server has %q", tt.client, tt.server)
		}
	}
}
