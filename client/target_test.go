package client

import (
	"encoding/json"
	"slices"
	"testing"
	"time"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in         string
		wantTarget string
		wantAddrs  []string
	}{
		{"127.0.0.1:50051", "127.0.0.1:50051", nil},
		{" dns:///gpu.internal:50051 ", "dns:///gpu.internal:50051", nil},
		{"xds:///hourglass", "xds:///hourglass", nil},
		{"unix:///run/hourglass.sock", "unix:///run/hourglass.sock", nil},
		{"a:1,b:2", listScheme + ":///replicas", []string{"a:1", "b:2"}},
		{" a:1 , [::1]:2 ,", listScheme + ":///replicas", []string{"a:1", "[::1]:2"}},
		{"a:1,", listScheme + ":///replicas", []string{"a:1"}},
	}
	for _, tt := range tests {
		target, addrs, err := parseTarget(tt.in)
		if err != nil || target != tt.wantTarget || !slices.Equal(addrs, tt.wantAddrs) {
			t.Errorf("parseTarget(%q) = %q, %q, %v; want %q, %q", tt.in, target, addrs, err, tt.wantTarget, tt.wantAddrs)
		}
	}
}

func TestServiceConfig(t *testing.T) {
	tests := []struct {
		attempts    int
		health      bool
		wantRetry   bool
		wantHealthy bool
	}{
		{3, true, true, true},
		{1, true, false, true},
		{5, false, true, false},
	}
	for _, tt := range tests {
		var sc struct {
			LoadBalancingConfig []map[string]any
			HealthCheckConfig   *struct{ ServiceName string }
			MethodConfig        []struct {
				Name        []struct{ Service string }
				RetryPolicy struct {
					MaxAttempts          int
					InitialBackoff       string
					MaxBackoff           string
					RetryableStatusCodes []string
				}
			}
		}
		js := serviceConfig(tt.attempts, tt.health)
		if err := json.Unmarshal([]byte(js), &sc); err != nil {
			t.Fatalf("serviceConfig(%d, %v) = %s: %v", tt.attempts, tt.health, js, err)
		}
		if len(sc.LoadBalancingConfig) != 1 || sc.LoadBalancingConfig[0][balancerName] == nil {
			t.Errorf("serviceConfig(%d, %v) = %s; want %s", tt.attempts, tt.health, js, balancerName)
		}
		if (sc.HealthCheckConfig != nil && sc.HealthCheckConfig.ServiceName == ServiceName) != tt.wantHealthy {
			t.Errorf("serviceConfig(%d, %v) = %s; health check %v", tt.attempts, tt.health, js, tt.wantHealthy)
		}
		if (len(sc.MethodConfig) == 1) != tt.wantRetry {
			t.Fatalf("serviceConfig(%d, %v) = %s; retry policy %v", tt.attempts, tt.health, js, tt.wantRetry)
		}
		if tt.wantRetry {
			mc := sc.MethodConfig[0]
			rp := mc.RetryPolicy
			if mc.Name[0].Service != ServiceName || rp.MaxAttempts != tt.attempts || rp.InitialBackoff != "0.1s" ||
				rp.MaxBackoff != "1s" || !slices.Equal(rp.RetryableStatusCodes, []string{"UNAVAILABLE"}) {
				t.Errorf("serviceConfig(%d, %v) = %s", tt.attempts, tt.health, js)
			}
		}
	}
}

func TestRetryBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 9: time.Second} {
		for range 100 {
			if got := retryBackoff(n); got < want*8/10 || got >= want*12/10 {
				t.Fatalf("retryBackoff(%d) = %v; want %v ± 20%%", n, got, want)
			}
		}
	}
}
