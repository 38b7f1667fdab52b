package executor

import "container/heap"

// jobQueue orders waiting jobs earliest deadline first, ties in arrival
// order. A job whose deadline is nearest has the least slack, and running it
// first is what lets the most jobs finish in time. Each job knows its index so
// that a job leaving early (deadline, cancel) is removed in O(log n).
type jobQueue struct {
	items []*job
	seq   uint64
	// fifo orders by arrival only: the naive pool benchmarks compare with.
	fifo bool
}

func (q *jobQueue) Len() int { return len(q.items) }

func (q *jobQueue) Less(i, j int) bool { return q.before(q.items[i], q.items[j]) }

// before reports whether a runs before b.
func (q *jobQueue) before(a, b *job) bool {
	if !q.fifo && !a.deadline.Equal(b.deadline) {
		return a.deadline.Before(b.deadline)
	}
	return a.seq < b.seq
}

func (q *jobQueue) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].index = i
	q.items[j].index = j
}

// Push and Pop are for container/heap only; use push, pop and remove.
func (q *jobQueue) Push(x any) {
	j := x.(*job)
	j.index = len(q.items)
	q.items = append(q.items, j)
}

func (q *jobQueue) Pop() any {
	n := len(q.items) - 1
	j := q.items[n]
	q.items[n] = nil
	q.items = q.items[:n]
	j.index = -1
	return j
}

func (q *jobQueue) push(j *job) {
	q.seq++
	j.seq = q.seq
	heap.Push(q, j)
}

func (q *jobQueue) pop() *job { return heap.Pop(q).(*job) }

// remove takes j out of the queue; it reports false when j was not queued.
func (q *jobQueue) remove(j *job) bool {
	if j.index < 0 || j.index >= len(q.items) || q.items[j.index] != j {
		return false
	}
	heap.Remove(q, j.index)
	return true
}

// ahead counts the queued jobs that run before j. O(n), which is fine for
// a bounded queue.
func (q *jobQueue) ahead(j *job) int {
	n := 0
	for _, o := range q.items {
		if o != j && q.before(o, j) {
			n++
		}
	}
	return n
}
