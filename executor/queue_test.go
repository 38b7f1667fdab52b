package executor

import (
	"testing"
	"time"
)

func TestQueueEarliestDeadlineFirst(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name      string
		deadlines []int // seconds after base, in arrival order
		remove    []int // arrival indexes taken out before popping
		want      []int // arrival indexes in pop order
	}{
		{name: "sorted", deadlines: []int{1, 2, 3}, want: []int{0, 1, 2}},
		{name: "reversed", deadlines: []int{3, 2, 1}, want: []int{2, 1, 0}},
		{name: "ties keep arrival order", deadlines: []int{5, 1, 5, 1}, want: []int{1, 3, 0, 2}},
		{name: "remove head", deadlines: []int{1, 2, 3}, remove: []int{0}, want: []int{1, 2}},
		{name: "remove middle", deadlines: []int{4, 1, 3, 2}, remove: []int{3}, want: []int{1, 2, 0}},
		{name: "remove all", deadlines: []int{2, 1}, remove: []int{0, 1}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q jobQueue
			jobs := make([]*job, len(tt.deadlines))
			for i, d := range tt.deadlines {
				jobs[i] = &job{deadline: base.Add(time.Duration(d) * time.Second)}
				q.push(jobs[i])
			}
			for _, r := range tt.remove {
				if !q.remove(jobs[r]) {
					t.Fatalf("remove(job %d) = false; want true", r)
				}
				if q.remove(jobs[r]) {
					t.Fatalf("second remove(job %d) = true; want false", r)
				}
			}
			var got []int
			for q.Len() > 0 {
				j := q.pop()
				for i := range jobs {
					if jobs[i] == j {
						got = append(got, i)
					}
				}
				if j.queued {
					t.Fatal("popped job still marked queued")
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("pop order = %v; want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("pop order = %v; want %v", got, tt.want)
				}
			}
		})
	}
}

func TestQueueAhead(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name      string
		fifo      bool
		tenants   string // one letter per job
		deadlines []int  // seconds after base, in arrival order
		want      []int  // jobs ahead of each
	}{
		{name: "earliest deadline first", tenants: "aaaa", deadlines: []int{3, 1, 2, 2}, want: []int{3, 0, 1, 2}},
		{name: "fifo ignores deadlines and tenants", fifo: true, tenants: "abab", deadlines: []int{3, 1, 2, 2}, want: []int{0, 1, 2, 3}},
		// b's only job waits for at most one of a's, however many a has.
		{name: "fair share between tenants", tenants: "aaab", deadlines: []int{1, 2, 3, 9}, want: []int{0, 2, 3, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := jobQueue{fifo: tt.fifo}
			var jobs []*job
			for i, d := range tt.deadlines {
				j := &job{deadline: base.Add(time.Duration(d) * time.Second), tenant: tt.tenants[i : i+1], estimate: time.Second}
				q.push(j)
				jobs = append(jobs, j)
			}
			pos := q.positions()
			for i, j := range jobs {
				got, _ := q.ahead(j)
				if got != tt.want[i] {
					t.Errorf("ahead(job %d) = %d; want %d", i, got, tt.want[i])
				}
				if pos[j] != got {
					t.Errorf("positions()[job %d] = %d; want ahead's %d", i, pos[j], got)
				}
			}
		})
	}
}

// A tenant that floods the queue gets its share, not more: pops alternate
// between tenants while both wait, whatever the deadlines.
func TestQueueFairShare(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	var q jobQueue
	for i := range 10 {
		q.push(&job{tenant: "flood", deadline: base.Add(time.Duration(i) * time.Second), estimate: time.Second})
	}
	for i := range 3 {
		q.push(&job{tenant: "quiet", deadline: base.Add(time.Hour + time.Duration(i)*time.Second), estimate: time.Second})
	}
	var got string
	for q.Len() > 0 {
		got += q.pop().tenant[:1]
	}
	if want := "fqfqfqfffffff"; got != want {
		t.Fatalf("pop order = %s; want %s", got, want)
	}
	// A tenant that was idle starts at the current virtual time: it cannot
	// bank credit and then take every worker.
	q.push(&job{tenant: "late", deadline: base, estimate: time.Second})
	q.push(&job{tenant: "flood", deadline: base, estimate: time.Second})
	q.push(&job{tenant: "late", deadline: base, estimate: time.Second})
	first, second := q.pop().tenant, q.pop().tenant
	if first == second {
		t.Fatalf("after idling, pops = %s, %s; want the tenants to alternate", first, second)
	}
}

func TestRestartBackoff(t *testing.T) {
	tests := []struct {
		failures int
		want     time.Duration
	}{
		{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond},
		{8, 10 * time.Second}, {50, 10 * time.Second},
	}
	for _, tt := range tests {
		if got := startBackoff(tt.failures); got != tt.want {
			t.Errorf("startBackoff(%d) = %v; want %v", tt.failures, got, tt.want)
		}
	}
}

// A tenant whose only queued job was just dispatched keeps the time it was
// served: it does not tie with a tenant still waiting for its first turn.
func TestQueueRemembersServedTime(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	var q jobQueue
	q.push(&job{tenant: "alice", deadline: base, estimate: time.Second})
	if got := q.pop().tenant; got != "alice" {
		t.Fatalf("first pop = %s; want alice", got)
	}
	// alice's job runs; she queues two more, then bob arrives with a later
	// deadline. bob has been served nothing: he goes next.
	q.push(&job{tenant: "alice", deadline: base.Add(time.Second), estimate: time.Second})
	q.push(&job{tenant: "alice", deadline: base.Add(2 * time.Second), estimate: time.Second})
	q.push(&job{tenant: "bob", deadline: base.Add(time.Hour), estimate: time.Second})
	var got string
	for q.Len() > 0 {
		got += q.pop().tenant[:1]
	}
	if got != "baa" {
		t.Fatalf("pop order = %s; want baa", got)
	}
}
