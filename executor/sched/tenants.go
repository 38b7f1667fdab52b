package sched

import "math"

// Fair-share constants (see the package doc).
const (
	// reserveHeadroom reserves for the other tenants a quarter more than
	// their recent demand, so that a tenant whose demand grows is not
	// refused for the flooder's sake before its demand is learned.
	reserveHeadroom = 1.25
	// idleDemand is the demand (in workers) below which a tenant with
	// nothing queued or running is forgotten.
	idleDemand = 1e-3
)

// tenant is what the fair share remembers of one tenant.
type tenant struct {
	name string
	// index is its place in Scheduler.order, which the fair share walks
	// instead of the map so that sums and ties come out the same on every
	// run.
	index int
	// demand is the planned work the tenant asked for (admitted or
	// not, but not jobs too short to finish even on an idle worker) per
	// unit of time, in workers, decayed with the demand window.
	demand float64
	seen   int64
	queued int64 // planned work waiting
	jobs   int   // jobs waiting
	// running counts its dispatched jobs.
	running int
	// waiting is its queued jobs, earliest deadline first, and served the
	// planned work dispatched for it in virtual time (start-time fair
	// queueing): dispatch prefers the least-served tenant when that keeps
	// every promise.
	waiting tree
	served  int64
}

func (s *Scheduler) tenant(name string) *tenant {
	t := s.tenants[name]
	if t == nil {
		t = &tenant{name: name, index: len(s.order), waiting: tree{workers: 1}}
		s.tenants[name] = t
		s.order = append(s.order, t)
	}
	return t
}

// forget drops an idle tenant.
func (s *Scheduler) forget(t *tenant) {
	last := s.order[len(s.order)-1]
	s.order[t.index], last.index = last, t.index
	s.order[len(s.order)-1] = nil
	s.order = s.order[:len(s.order)-1]
	delete(s.tenants, t.name)
}

// fairCandidate is the earliest-deadline job of the least-served tenant
// with waiting jobs (ties: the earlier head), nil when none waits.
func (s *Scheduler) fairCandidate() *Job {
	var best *tenant
	var bestHead *Job
	for _, t := range s.order {
		if t.jobs == 0 {
			continue
		}
		head := t.waiting.first()
		if best == nil || t.served < best.served || (t.served == best.served && s.queue.before(head, bestHead)) {
			best, bestHead = t, head
		}
	}
	return bestHead
}

func (t *tenant) decay(now, window int64) {
	if now > t.seen {
		t.demand *= math.Exp(-float64(now-t.seen) / float64(window))
		t.seen = now
	}
}

func (t *tenant) ask(now, planned, window int64) {
	t.decay(now, window)
	t.demand += float64(planned) / float64(window)
}

// within reports whether the tenant's demand, in workers, is within the
// given share of w workers, with the same headroom as the reservation.
func (t *tenant) within(share, w float64) bool {
	return t.demand <= reserveHeadroom*share*w
}

// overShare is how far (in planned work, nanoseconds of one worker's time
// over W) tenant ten would exceed its share of the workers' time before
// j's deadline, converted to the time it takes the tenant's held work to
// drain at its share; 0 when it does not.
//
// A tenant's share is what the other active tenants leave it: each of them
// keeps min(its recent demand, the equal share 1/n) with some headroom, and
// no tenant's share falls below 1/n. A tenant whose own recent demand is
// within its share (with the same headroom) is not refused: it is not the
// one booking the others' time, and a light tenant's short deadline would
// otherwise count its one running job against a tiny horizon. A tenant
// with nothing queued or running may always queue one job, so that the
// share never stops a tenant outright. The schedulability test still
// applies to every tenant.
func (s *Scheduler) overShare(now int64, j *Job, ten *tenant, remaining int64) int64 {
	window := int64(s.cfg.DemandWindow)
	for i := 0; i < len(s.order); {
		u := s.order[i]
		u.decay(now, window)
		if u != ten && u.jobs == 0 && u.running == 0 && u.demand < idleDemand {
			s.forget(u) // the last tenant moves to i
			continue
		}
		i++
	}
	n := len(s.order)
	if n < 2 {
		return 0
	}
	held := ten.queued
	if ten.running > 0 {
		for _, r := range s.running {
			if r.Tenant == j.Tenant {
				held += s.left(r, now)
			}
		}
	}
	if held == 0 {
		return 0
	}
	w := float64(s.workers)
	fair := 1 / float64(n)
	others := 0.0
	for _, u := range s.order {
		if u != ten {
			others += min(u.demand/w, fair)
		}
	}
	share := max(fair, 1-reserveHeadroom*others)
	if ten.within(share, w) {
		return 0
	}
	limit := share * w * float64(remaining)
	excess := float64(held+int64(j.Planned)) - limit
	if excess <= 0 {
		return 0
	}
	return int64(excess / (w * share))
}
