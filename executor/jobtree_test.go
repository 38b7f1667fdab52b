package executor

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestJobTreeMatchesSortedSlice drives a jobTree and a plain sorted slice
// with the same random inserts, removals and pops (deadlines drawn from a
// few values so that ties are common) and checks every answer of the tree
// against the slice after each step.
func TestJobTreeMatchesSortedSlice(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	for _, fifo := range []bool{false, true} {
		for seed := range uint64(20) {
			tq := newTenantQueue(fifo, 0)
			rng := rand.New(rand.NewPCG(seed, 1))
			var ref []*job // in run order
			var seq uint64
			for step := range 400 {
				switch op := rng.IntN(10); {
				case op < 5 || len(ref) == 0: // insert
					seq++
					j := &job{seq: seq, deadline: base.Add(time.Duration(rng.IntN(8)) * time.Second),
						estimate: time.Duration(1+rng.IntN(1000)) * time.Millisecond}
					tq.insert(j)
					i, _ := slices.BinarySearchFunc(ref, j, func(a, b *job) int {
						if tq.before(a, b) {
							return -1
						}
						return 1
					})
					ref = slices.Insert(ref, i, j)
				case op < 8: // remove a random job, then try again
					i := rng.IntN(len(ref))
					j := ref[i]
					if !tq.remove(j) {
						t.Fatalf("fifo %v seed %d step %d: remove of a queued job = false", fifo, seed, step)
					}
					if tq.remove(j) {
						t.Fatalf("fifo %v seed %d step %d: second remove = true", fifo, seed, step)
					}
					ref = slices.Delete(ref, i, i+1)
				default: // pop
					if got := tq.popFirst(); got != ref[0] {
						t.Fatalf("fifo %v seed %d step %d: popFirst = seq %d; want seq %d", fifo, seed, step, got.seq, ref[0].seq)
					}
					ref = ref[1:]
				}
				checkJobTree(t, tq, ref, rng, base)
			}
		}
	}
}

func checkJobTree(t *testing.T, tq *tenantQueue, ref []*job, rng *rand.Rand, base time.Time) {
	t.Helper()
	if tq.Len() != len(ref) {
		t.Fatalf("Len = %d; want %d", tq.Len(), len(ref))
	}
	if len(ref) == 0 {
		return
	}
	if tq.first() != ref[0] {
		t.Fatalf("first = seq %d; want seq %d", tq.first().seq, ref[0].seq)
	}
	var order []*job
	tq.each(func(rank int, j *job) {
		if rank != len(order) {
			t.Fatalf("each: rank %d at position %d", rank, len(order))
		}
		order = append(order, j)
	})
	if !slices.Equal(order, ref) {
		t.Fatal("each visits the jobs out of run order")
	}
	// rank of every queued job, and of a job that is not queued.
	probe := &job{seq: 1 << 62, deadline: base.Add(time.Duration(rng.IntN(9)) * time.Second)}
	for _, j := range append(slices.Clone(ref), probe) {
		wantCount, wantWork := 0, time.Duration(0)
		for _, o := range ref {
			if tq.before(o, j) {
				wantCount++
				wantWork += o.estimate
			}
		}
		if count, work := tq.rank(j); count != wantCount || work != wantWork {
			t.Fatalf("rank(seq %d) = %d, %v; want %d, %v", j.seq, count, work, wantCount, wantWork)
		}
	}
	for m := range len(ref) + 2 {
		var want time.Duration
		for _, o := range ref[:min(m, len(ref))] {
			want += o.estimate
		}
		if got := tq.firstWork(m); got != want {
			t.Fatalf("firstWork(%d) = %v; want %v", m, got, want)
		}
	}
}

// TestQueuePositionsMatchAhead: the batch positions sent to streaming
// callers agree with ahead, job by job, with several tenants.
func TestQueuePositionsMatchAhead(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	rng := rand.New(rand.NewPCG(3, 4))
	var q jobQueue
	var jobs []*job
	for i := range 300 {
		j := &job{tenant: string(rune('a' + rng.IntN(4))), deadline: base.Add(time.Duration(rng.IntN(30)) * time.Second),
			estimate: time.Duration(1+rng.IntN(5)) * time.Second}
		q.push(j)
		jobs = append(jobs, j)
		if i%7 == 6 {
			q.pop()
		}
	}
	pos := q.positions()
	if len(pos) != q.Len() {
		t.Fatalf("positions has %d jobs; the queue %d", len(pos), q.Len())
	}
	for _, j := range jobs {
		if !j.queued {
			continue
		}
		if n, _ := q.ahead(j); pos[j] != n {
			t.Fatalf("positions[%s job] = %d; ahead = %d", j.tenant, pos[j], n)
		}
	}
}
