package sched

import "math"

// tree is the queue in the order it will be served, as a treap: a binary
// search tree by run order whose nodes also carry random priorities kept
// in heap order, which keeps it balanced in expectation. Each node sums
// over its subtree what the schedulability test asks about a prefix or a
// suffix of the queue, so that admission, dispatch and the search for
// unreachable jobs take O(log n) in the waiting jobs instead of a walk:
//
//   - size: the number of jobs;
//   - work: their summed planned run times;
//   - minKey: the least, over the subtree's jobs k, of
//     W·latest(k) − (planned work of the subtree's jobs before k), where
//     latest(k) = deadline(k) − planned(k) is k's latest start and W the
//     number of workers. Job k keeps its promise on W workers when
//     W·latest(k) − (work before k in the whole queue) ≥ W·now + R, with R
//     the planned work left on the running jobs (see the package doc);
//   - minLatest: the least latest start, to find the jobs that can no
//     longer finish.
type tree struct {
	root *node
	fifo bool
	// workers is W in minKey; changing it recomputes every node.
	workers int64
	// rand is the state of the priority generator (splitmix64). The
	// priorities only shape the tree, never the order of jobs, so a fixed
	// seed keeps the scheduler deterministic.
	rand uint64
}

type node struct {
	j           *Job
	prio        uint64
	left, right *node
	size        int
	work        int64 // nanoseconds
	minKey      int64
	minLatest   int64
}

func (n *node) count() int {
	if n == nil {
		return 0
	}
	return n.size
}

func (n *node) sum() int64 {
	if n == nil {
		return 0
	}
	return n.work
}

func (n *node) keyMin() int64 {
	if n == nil {
		return math.MaxInt64
	}
	return n.minKey
}

func (n *node) latestMin() int64 {
	if n == nil {
		return math.MaxInt64
	}
	return n.minLatest
}

// update recomputes n's sums from its children.
func (t *tree) update(n *node) *node {
	p := int64(n.j.Planned)
	n.size = 1 + n.left.count() + n.right.count()
	n.work = p + n.left.sum() + n.right.sum()
	n.minKey = min(n.left.keyMin(), t.workers*n.j.latest-n.left.sum(), sub(n.right.keyMin(), n.left.sum()+p))
	n.minLatest = min(n.j.latest, n.left.latestMin(), n.right.latestMin())
	return n
}

// sub is a − b that keeps "no job" (MaxInt64) as it is.
func sub(a, b int64) int64 {
	if a == math.MaxInt64 {
		return a
	}
	return a - b
}

// before is the run order: arrival in fifo mode, else deadline then
// arrival.
func (t *tree) before(a, b *Job) bool {
	if !t.fifo && a.deadline != b.deadline {
		return a.deadline < b.deadline
	}
	return a.seq < b.seq
}

func (t *tree) Len() int { return t.root.count() }

func (t *tree) nextPrio() uint64 {
	t.rand += 0x9e3779b97f4a7c15
	z := t.rand
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (t *tree) insert(j *Job) {
	left, right := t.split(t.root, j)
	n := t.update(&node{j: j, prio: t.nextPrio()})
	t.root = t.merge(t.merge(left, n), right)
}

// split divides the subtree n into the jobs that run before j and the rest.
func (t *tree) split(n *node, j *Job) (before, rest *node) {
	if n == nil {
		return nil, nil
	}
	if t.before(n.j, j) {
		l, r := t.split(n.right, j)
		n.right = l
		return t.update(n), r
	}
	l, r := t.split(n.left, j)
	n.left = r
	return l, t.update(n)
}

// merge joins two subtrees where every job of a runs before every job of b.
func (t *tree) merge(a, b *node) *node {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = t.merge(a.right, b)
		return t.update(a)
	default:
		b.left = t.merge(a, b.left)
		return t.update(b)
	}
}

// remove takes j out and reports whether it was there.
func (t *tree) remove(j *Job) bool {
	var found bool
	t.root, found = t.removeFrom(t.root, j)
	return found
}

func (t *tree) removeFrom(n *node, j *Job) (*node, bool) {
	if n == nil {
		return nil, false
	}
	var found bool
	switch {
	case n.j == j:
		return t.merge(n.left, n.right), true
	case t.before(j, n.j):
		n.left, found = t.removeFrom(n.left, j)
	default:
		n.right, found = t.removeFrom(n.right, j)
	}
	return t.update(n), found
}

// first is the job served next; nil when the tree is empty.
func (t *tree) first() *Job {
	n := t.root
	if n == nil {
		return nil
	}
	for n.left != nil {
		n = n.left
	}
	return n.j
}

// probe answers, for a job j that need not be in the tree, the questions
// admission asks: how many jobs and how much planned work run before j,
// and the least key (W·latest(k) − work before k, over the whole queue) of
// the jobs that run after j.
func (t *tree) probe(j *Job) (count int, ahead int64, minAfter int64) {
	minAfter = math.MaxInt64
	var off int64 // planned work of the jobs before the current subtree
	for n := t.root; n != nil; {
		if t.before(n.j, j) {
			count += n.left.count() + 1
			off += n.left.sum() + int64(n.j.Planned)
			n = n.right
			continue
		}
		// n and its right subtree run after j.
		here := off + n.left.sum()
		minAfter = min(minAfter, t.workers*n.j.latest-here, sub(n.right.keyMin(), here+int64(n.j.Planned)))
		n = n.left
	}
	return count, off, minAfter
}

// minBefore is the least key (W·latest(k) − work before k, over the whole
// queue) of the jobs that run before j; MaxInt64 when none does.
func (t *tree) minBefore(j *Job) int64 {
	best := int64(math.MaxInt64)
	var off int64
	for n := t.root; n != nil; {
		if !t.before(n.j, j) {
			n = n.left
			continue
		}
		best = min(best, sub(n.left.keyMin(), off), t.workers*n.j.latest-(off+n.left.sum()))
		off += n.left.sum() + int64(n.j.Planned)
		n = n.right
	}
	return best
}

// workBefore is the planned work of the jobs whose deadline is before
// deadline (in fifo mode: all of them).
func (t *tree) workBefore(deadline int64) int64 {
	var w int64
	for n := t.root; n != nil; {
		if t.fifo || n.j.deadline < deadline {
			w += n.left.sum() + int64(n.j.Planned)
			n = n.right
		} else {
			n = n.left
		}
	}
	return w
}

// unreachable appends the jobs whose latest start is before now.
func (t *tree) unreachable(now int64, out []*Job) []*Job {
	var walk func(n *node)
	walk = func(n *node) {
		if n == nil || n.minLatest >= now {
			return
		}
		walk(n.left)
		if n.j.latest < now {
			out = append(out, n.j)
		}
		walk(n.right)
	}
	walk(t.root)
	return out
}

// each calls fn with every job in run order, with its rank from 0.
func (t *tree) each(fn func(rank int, j *Job)) {
	rank := 0
	var walk func(n *node)
	walk = func(n *node) {
		for n != nil {
			walk(n.left)
			fn(rank, n.j)
			rank++
			n = n.right
		}
	}
	walk(t.root)
}

// setWorkers changes W and recomputes every node's key.
func (t *tree) setWorkers(w int64) {
	t.workers = w
	var walk func(n *node)
	walk = func(n *node) {
		if n == nil {
			return
		}
		walk(n.left)
		walk(n.right)
		t.update(n)
	}
	walk(t.root)
}
