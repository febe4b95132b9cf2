package server

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// TaskFunc runs the task named key (a volume, or "volume archive" for a
// proxy's per-archive sends). A non-nil error makes the queue run it again
// after a backoff; a task that wants to run again without an error pushes
// itself (Push or PushAfter) before returning.
type TaskFunc func(ctx context.Context, key string) error

// TaskOptions configure a TaskQueue.
type TaskOptions struct {
	// Workers is the number of tasks run at once (walb-tools -bg).
	// Default 1.
	Workers int
	// RetryMin is the first retry delay after an error (-delay). Default 1s.
	RetryMin time.Duration
	// RetryMax caps the doubling retry delay (-maxdelay). Default 300s; it
	// is raised to RetryMin if smaller.
	RetryMax time.Duration
	// Logger receives task failures. Default slog.Default().
	Logger *slog.Logger
}

// task is one key's entry. A key is in at most one of: queued (in the ready
// list), delayed (timer armed), running; running may also carry a request
// to run again.
type task struct {
	key      string
	queued   bool
	running  bool
	timer    *time.Timer
	due      time.Time // when the armed timer fires
	again    bool      // pushed while running: run again at once
	againDue time.Time // pushed-after while running: run again then
	failures int       // consecutive errors
	removed  bool      // removed while running: do not run again
}

// TaskQueue runs background tasks, at most one per key at a time, on a fixed
// number of workers (walb-tools' -bg task queue). Pushing a key that is
// already queued does nothing (per-volume dedup); pushing a running key
// makes it run once more after the current run. Errors are retried with a
// doubling delay; Kick runs every delayed task now. Tasks may be pushed
// before Start (for example by Service.Recover); they run once workers
// start.
type TaskQueue struct {
	run  TaskFunc
	opts TaskOptions
	log  *slog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	tasks   map[string]*task
	ready   []string
	started bool
	stopped bool
	wg      sync.WaitGroup
	ctx     context.Context
}

// NewTaskQueue returns a queue that runs tasks with run. Call Start to run
// them.
func NewTaskQueue(run TaskFunc, opts TaskOptions) *TaskQueue {
	if opts.Workers <= 0 {
		opts.Workers = 1
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 300 * time.Second
	}
	opts.RetryMax = max(opts.RetryMax, opts.RetryMin)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	q := &TaskQueue{run: run, opts: opts, log: opts.Logger, tasks: map[string]*task{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Start starts the workers. Tasks run with ctx (canceling it aborts running
// tasks: a force shutdown). Start may be called once.
func (q *TaskQueue) Start(ctx context.Context) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started || q.stopped {
		return
	}
	q.started = true
	q.ctx = ctx
	for range q.opts.Workers {
		q.wg.Add(1)
		go q.worker()
	}
}

// entry returns key's task, creating it.
func (q *TaskQueue) entry(key string) *task {
	t := q.tasks[key]
	if t == nil {
		t = &task{key: key}
		q.tasks[key] = t
	}
	return t
}

// enqueueLocked puts t on the ready list, dropping its timer.
func (q *TaskQueue) enqueueLocked(t *task) {
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
		t.due = time.Time{}
	}
	if !t.queued {
		t.queued = true
		q.ready = append(q.ready, t.key)
		q.cond.Signal()
	}
}

// armLocked schedules t at due, unless it is already due sooner.
func (q *TaskQueue) armLocked(t *task, due time.Time) {
	if t.timer != nil {
		if !due.Before(t.due) {
			return
		}
		t.timer.Stop()
	}
	t.due = due
	var tm *time.Timer
	tm = time.AfterFunc(time.Until(due), func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if t.timer != tm || q.stopped {
			return
		}
		t.timer = nil
		t.due = time.Time{}
		q.enqueueLocked(t)
	})
	t.timer = tm
}

// Push makes key run as soon as a worker is free. It does nothing if key is
// already queued; if key is running, it runs once more afterwards.
func (q *TaskQueue) Push(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return
	}
	t := q.entry(key)
	t.removed = false
	if t.running {
		t.again = true
		return
	}
	q.enqueueLocked(t)
}

// PushAfter makes key run after d, unless it is already due sooner.
func (q *TaskQueue) PushAfter(key string, d time.Duration) {
	if d <= 0 {
		q.Push(key)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return
	}
	t := q.entry(key)
	t.removed = false
	due := time.Now().Add(d)
	switch {
	case t.running:
		if !t.again && (t.againDue.IsZero() || due.Before(t.againDue)) {
			t.againDue = due
		}
	case t.queued:
	default:
		q.armLocked(t, due)
	}
}

// Kick makes every delayed task due now and resets retry backoffs
// (walb-tools kick: "run delayed tasks now").
func (q *TaskQueue) Kick() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return
	}
	for _, key := range slices.Sorted(maps.Keys(q.tasks)) {
		t := q.tasks[key]
		t.failures = 0
		if t.timer != nil {
			q.enqueueLocked(t)
		}
		if t.running && !t.againDue.IsZero() {
			t.again = true
		}
	}
}

// Remove drops the queued or delayed runs of key (a running one finishes,
// but does not run again). walb-tools drops a volume's tasks when it stops.
func (q *TaskQueue) Remove(key string) {
	q.RemoveFunc(func(k string) bool { return k == key })
}

// RemoveFunc is Remove for every key for which match is true.
func (q *TaskQueue) RemoveFunc(match func(key string) bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	kept := q.ready[:0]
	for _, k := range q.ready {
		if !match(k) {
			kept = append(kept, k)
		}
	}
	clear(q.ready[len(kept):])
	q.ready = kept
	for k, t := range q.tasks {
		if !match(k) {
			continue
		}
		if t.timer != nil {
			t.timer.Stop()
			t.timer = nil
		}
		t.queued, t.again, t.againDue, t.failures = false, false, time.Time{}, 0
		if t.running {
			t.removed = true
		} else {
			delete(q.tasks, k)
		}
	}
}

// worker runs ready tasks until the queue stops.
func (q *TaskQueue) worker() {
	defer q.wg.Done()
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for len(q.ready) == 0 && !q.stopped {
			q.cond.Wait()
		}
		if q.stopped {
			return
		}
		key := q.ready[0]
		q.ready[0] = ""
		q.ready = q.ready[1:]
		t := q.tasks[key]
		t.queued, t.running = false, true
		q.mu.Unlock()
		err := q.runOne(key)
		q.mu.Lock()
		q.finishLocked(t, err)
	}
}

// runOne runs one task, turning a panic into an error.
func (q *TaskQueue) runOne(key string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			q.log.Error("task panicked", "task", key, "panic", r, "stack", string(debug.Stack()))
			err = errors.Wrapf(ErrPanic, "task %s: %v", key, r)
		}
	}()
	return q.run(q.ctx, key)
}

// finishLocked records the end of a run and schedules the next one.
func (q *TaskQueue) finishLocked(t *task, err error) {
	t.running = false
	if q.stopped {
		return
	}
	var retry time.Duration
	if err != nil {
		t.failures++
		retry = q.opts.RetryMin << min(t.failures-1, 30)
		if retry <= 0 || retry > q.opts.RetryMax {
			retry = q.opts.RetryMax
		}
		level := slog.LevelWarn
		if q.ctx.Err() != nil {
			level = slog.LevelInfo
		}
		q.log.Log(q.ctx, level, "task failed", "task", t.key, "err", err, "failures", t.failures, "retry", retry)
	} else {
		t.failures = 0
	}
	if t.removed {
		delete(q.tasks, t.key)
		return
	}
	switch {
	case t.again:
		q.enqueueLocked(t)
	case err != nil:
		due := time.Now().Add(retry)
		if !t.againDue.IsZero() && t.againDue.Before(due) {
			due = t.againDue
		}
		q.armLocked(t, due)
	case !t.againDue.IsZero():
		q.armLocked(t, t.againDue)
	default:
		delete(q.tasks, t.key)
	}
	t.again, t.againDue = false, time.Time{}
}

// Stop stops dispatching: queued and delayed tasks are dropped, running ones
// finish (cancel Start's context first to abort them). Stop waits for the
// workers to exit; later pushes do nothing.
func (q *TaskQueue) Stop() {
	q.mu.Lock()
	q.stopped = true
	for _, t := range q.tasks {
		if t.timer != nil {
			t.timer.Stop()
			t.timer = nil
		}
	}
	q.ready = nil
	clear(q.tasks)
	q.cond.Broadcast()
	q.mu.Unlock()
	q.wg.Wait()
}

// TaskInfo describes one task for status output.
type TaskInfo struct {
	Key      string
	State    string // "queued", "running" or "delayed"
	Due      time.Time
	Failures int
}

// String formats the task as a status line.
func (ti TaskInfo) String() string {
	s := fmt.Sprintf("task\tkey:%s\tstate:%s\tfailures:%d", ti.Key, ti.State, ti.Failures)
	if !ti.Due.IsZero() {
		s += "\tdue:" + ti.Due.UTC().Format(time.RFC3339)
	}
	return s
}

// Tasks returns the queue's tasks sorted by key.
func (q *TaskQueue) Tasks() []TaskInfo {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []TaskInfo
	for _, k := range slices.Sorted(maps.Keys(q.tasks)) {
		t := q.tasks[k]
		ti := TaskInfo{Key: k, Failures: t.failures}
		switch {
		case t.running:
			ti.State = "running"
		case t.queued:
			ti.State = "queued"
		case t.timer != nil:
			ti.State, ti.Due = "delayed", t.due
		default:
			continue
		}
		out = append(out, ti)
	}
	return out
}

// Len returns the number of queued, delayed and running tasks.
func (q *TaskQueue) Len() int { return len(q.Tasks()) }
