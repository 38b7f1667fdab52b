package executor

import "time"

// jobQueue holds the jobs waiting for a worker. Tenants share the workers
// fairly, and within a tenant the earliest deadline goes first:
//
//   - Each tenant with waiting jobs has its own queue, ordered by deadline
//     (the job with the least slack first, which lets the most jobs finish in
//     time), ties in arrival order.
//   - pop serves the tenant that has been served the least estimated worker
//     time (start-time fair queueing by virtual time). A tenant that starts
//     waiting begins at the current virtual time, so it cannot bank credit
//     while idle, and a tenant flooding the queue gets its share, not more.
//
// With one tenant this is plain earliest-deadline-first. In fifo mode (the
// naive pool the benchmarks compare with) there is one queue in arrival order.
// Each tenant's jobs are a jobTree, so push, pop, removing a job that leaves
// early (deadline, cancel) and admission's estimate of the work ahead of a
// job all take O(log n) in the tenant's jobs, plus a term per tenant.
type jobQueue struct {
	fifo    bool
	tenants map[string]*tenantQueue // only tenants with waiting jobs
	n       int
	// streamers counts waiting jobs whose callers want position updates.
	streamers int
	seq       uint64
	vtime     time.Duration // virtual time: served time of the last tenant popped
	// served remembers the served time of tenants whose queue emptied, so
	// that a tenant whose job was just dispatched does not come back at
	// the virtual time, level with a tenant still waiting for its first
	// turn. Entries at or below the virtual time carry no information and
	// are pruned.
	served map[string]time.Duration
}

// tenantQueue is one tenant's waiting jobs.
type tenantQueue struct {
	jobTree
	fifo   bool
	served time.Duration // estimated worker time dispatched, in virtual time
}

func newTenantQueue(fifo bool, served time.Duration) *tenantQueue {
	t := &tenantQueue{fifo: fifo, served: served}
	t.jobTree.before = t.before
	return t
}

func (q *jobQueue) Len() int { return q.n }

func (q *jobQueue) key(j *job) string {
	if q.fifo {
		return ""
	}
	return j.tenant
}

func (q *jobQueue) push(j *job) {
	if q.tenants == nil {
		q.tenants = map[string]*tenantQueue{}
	}
	q.seq++
	j.seq = q.seq
	t := q.tenants[q.key(j)]
	if t == nil {
		t = newTenantQueue(q.fifo, max(q.vtime, q.served[q.key(j)]))
		delete(q.served, q.key(j))
		q.tenants[q.key(j)] = t
	}
	t.insert(j)
	j.queued = true
	q.count(j, 1)
}

func (q *jobQueue) count(j *job, delta int) {
	q.n += delta
	if j.streaming {
		q.streamers += delta
	}
}

// pop takes the next job: from the least-served tenant, its earliest
// deadline. The queue must not be empty.
func (q *jobQueue) pop() *job {
	var best *tenantQueue
	var bestKey string
	for k, t := range q.tenants {
		if best == nil || t.served < best.served ||
			(t.served == best.served && t.before(t.first(), best.first())) {
			best, bestKey = t, k
		}
	}
	j := best.popFirst()
	j.queued = false
	q.vtime = best.served
	// At least a millisecond, so that jobs with no estimate yet still
	// take turns.
	best.served += max(j.estimate, time.Millisecond)
	q.count(j, -1)
	if best.Len() == 0 {
		delete(q.tenants, bestKey)
		q.remember(bestKey, best.served)
	}
	return j
}

// remember keeps an emptied tenant's served time, pruning what the virtual
// time has caught up with so the map stays as small as the set of tenants
// served recently.
func (q *jobQueue) remember(key string, served time.Duration) {
	if q.served == nil {
		q.served = map[string]time.Duration{}
	}
	q.served[key] = served
	if len(q.served) > 2*len(q.tenants)+16 {
		for k, v := range q.served {
			if v <= q.vtime {
				delete(q.served, k)
			}
		}
	}
}

// remove takes j out of the queue; it reports false when j was not queued.
func (q *jobQueue) remove(j *job) bool {
	t := q.tenants[q.key(j)]
	if t == nil || !j.queued || !t.remove(j) {
		return false
	}
	j.queued = false
	q.count(j, -1)
	if t.Len() == 0 {
		delete(q.tenants, q.key(j))
		q.remember(q.key(j), t.served)
	}
	return true
}

// ahead estimates the jobs that run before j and their estimated worker
// time: the k jobs before it in its tenant's order, and from every other
// tenant the jobs fair sharing serves in between: k of them, or k+1 when
// that tenant's turn comes first. Exact with one tenant; an estimate with
// several, since later arrivals change the order among tenants.
func (q *jobQueue) ahead(j *job) (count int, work time.Duration) {
	own := q.tenants[q.key(j)]
	ownServed, ownHead := q.vtime, j
	k := 0
	if own != nil {
		ownServed, ownHead = own.served, own.first()
		k, work = own.rank(j)
	}
	count = k
	for key, t := range q.tenants {
		if key == q.key(j) {
			continue
		}
		m := t.turnsBefore(ownServed, ownHead, k)
		count += m
		work += t.firstWork(m)
	}
	return count, work
}

// turnsBefore is how many of t's jobs run before the job of rank k in a
// tenant whose served time and head job are given.
func (t *tenantQueue) turnsBefore(served time.Duration, head *job, k int) int {
	first := t.served < served || (t.served == served && t.before(t.first(), head))
	if first {
		return min(t.Len(), k+1)
	}
	return min(t.Len(), k)
}

// positions computes ahead(j).count for every waiting job at once, in
// O(n·tenants), for queue position updates after each dispatch.
func (q *jobQueue) positions() map[*job]int {
	pos := make(map[*job]int, q.n)
	for key, own := range q.tenants {
		head := own.first()
		own.each(func(k int, j *job) {
			n := k
			for other, t := range q.tenants {
				if other != key {
					n += t.turnsBefore(own.served, head, k)
				}
			}
			pos[j] = n
		})
	}
	return pos
}

// before reports whether a runs before b within one tenant.
func (t *tenantQueue) before(a, b *job) bool {
	if !t.fifo && !a.deadline.Equal(b.deadline) {
		return a.deadline.Before(b.deadline)
	}
	return a.seq < b.seq
}
