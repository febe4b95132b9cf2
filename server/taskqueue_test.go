package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

// recorder is a controllable TaskFunc.
type recorder struct {
	mu      sync.Mutex
	runs    map[string]int
	cur     int
	maxCur  int
	started chan string
	gate    chan struct{} // each run waits for a token if not nil
	fail    func(key string, run int) error
}

func newRecorder() *recorder {
	return &recorder{runs: map[string]int{}, started: make(chan string, 100)}
}

func (r *recorder) run(ctx context.Context, key string) error {
	r.mu.Lock()
	r.runs[key]++
	n := r.runs[key]
	r.cur++
	r.maxCur = max(r.maxCur, r.cur)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.cur--
		r.mu.Unlock()
	}()
	r.started <- key
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.fail != nil {
		return r.fail(key, n)
	}
	return nil
}

func (r *recorder) count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[key]
}

func waitStarted(t *testing.T, r *recorder, want string) {
	t.Helper()
	select {
	case k := <-r.started:
		require.Equal(t, want, k)
	case <-time.After(10 * time.Second):
		t.Fatalf("task %s did not start", want)
	}
}

// waitIdle waits until the queue holds no task.
func waitIdle(t *testing.T, q *TaskQueue) {
	t.Helper()
	require.Eventually(t, func() bool { return q.Len() == 0 }, 10*time.Second, time.Millisecond)
}

func TestTaskQueueDedup(t *testing.T) {
	r := newRecorder()
	q := NewTaskQueue(r.run, TaskOptions{Logger: quiet})
	q.Push("a")
	q.Push("a")
	q.PushAfter("a", time.Hour) // already queued: no effect
	q.Push("b")
	require.Equal(t, []TaskInfo{{Key: "a", State: "queued"}, {Key: "b", State: "queued"}}, q.Tasks())
	q.Start(context.Background())
	defer q.Stop()
	waitStarted(t, r, "a")
	waitStarted(t, r, "b")
	waitIdle(t, q)
	require.Equal(t, 1, r.count("a"))
	require.Equal(t, 1, r.count("b"))
}

func TestTaskQueuePushWhileRunning(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	q := NewTaskQueue(r.run, TaskOptions{Workers: 4, Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	q.Push("v")
	waitStarted(t, r, "v")
	require.Equal(t, "running", q.Tasks()[0].State)
	q.Push("v")
	q.Push("v")
	// Never twice at once, even with free workers.
	r.gate <- struct{}{}
	waitStarted(t, r, "v")
	r.gate <- struct{}{}
	waitIdle(t, q)
	require.Equal(t, 2, r.count("v"))
	r.mu.Lock()
	require.Equal(t, 1, r.maxCur)
	r.mu.Unlock()
}

func TestTaskQueueWorkerLimit(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	q := NewTaskQueue(r.run, TaskOptions{Workers: 2, Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		q.Push(k)
	}
	<-r.started
	<-r.started
	// Both workers are busy: nothing else starts.
	select {
	case k := <-r.started:
		t.Fatalf("task %s started beyond the worker limit", k)
	case <-time.After(30 * time.Millisecond):
	}
	for range 3 {
		r.gate <- struct{}{}
		<-r.started
	}
	r.gate <- struct{}{}
	r.gate <- struct{}{}
	waitIdle(t, q)
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Equal(t, 2, r.maxCur)
	require.Len(t, r.runs, 5)
}

func TestTaskQueueRetryAndKick(t *testing.T) {
	r := newRecorder()
	r.fail = func(key string, n int) error {
		if n < 3 {
			return errors.Errorf("attempt %d fails", n)
		}
		return nil
	}
	// A retry delay that never expires during the test: only Kick runs the
	// task again.
	q := NewTaskQueue(r.run, TaskOptions{RetryMin: time.Hour, RetryMax: 2 * time.Hour, Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	q.Push("v")
	waitStarted(t, r, "v")
	require.Eventually(t, func() bool {
		ts := q.Tasks()
		return len(ts) == 1 && ts[0].State == "delayed" && ts[0].Failures == 1
	}, 10*time.Second, time.Millisecond)
	due := q.Tasks()[0].Due
	require.WithinDuration(t, time.Now().Add(time.Hour), due, time.Minute)
	require.Contains(t, q.Tasks()[0].String(), "state:delayed\tfailures:1\tdue:")

	// A plain push does not shorten a retry... but Kick does.
	q.PushAfter("v", 2*time.Hour)
	require.Equal(t, due, q.Tasks()[0].Due)
	q.Kick()
	waitStarted(t, r, "v")
	require.Eventually(t, func() bool {
		ts := q.Tasks()
		return len(ts) == 1 && ts[0].State == "delayed" && ts[0].Failures == 1 // Kick reset the count
	}, 10*time.Second, time.Millisecond)
	q.Push("v") // an explicit push runs it at once
	waitStarted(t, r, "v")
	waitIdle(t, q)
	require.Equal(t, 3, r.count("v"))
}

func TestTaskQueueBackoffDoubles(t *testing.T) {
	r := newRecorder()
	r.fail = func(string, int) error { return errors.New("down") }
	q := NewTaskQueue(r.run, TaskOptions{RetryMin: time.Hour, RetryMax: 3 * time.Hour, Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	wantDelay := []time.Duration{time.Hour, 2 * time.Hour, 3 * time.Hour, 3 * time.Hour}
	for i, d := range wantDelay {
		if i == 0 {
			q.Push("v")
		} else {
			// Run the retry now without resetting the failure count.
			q.mu.Lock()
			q.enqueueLocked(q.tasks["v"])
			q.mu.Unlock()
		}
		waitStarted(t, r, "v")
		require.Eventually(t, func() bool {
			ts := q.Tasks()
			return len(ts) == 1 && ts[0].Failures == i+1 && ts[0].State == "delayed"
		}, 10*time.Second, time.Millisecond)
		require.WithinDuration(t, time.Now().Add(d), q.Tasks()[0].Due, time.Minute, "retry %d", i)
	}
}

func TestTaskQueuePushAfter(t *testing.T) {
	r := newRecorder()
	q := NewTaskQueue(r.run, TaskOptions{Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	q.PushAfter("late", time.Hour)
	q.PushAfter("late", 2*time.Hour) // later: keeps the sooner due
	ts := q.Tasks()
	require.Len(t, ts, 1)
	require.WithinDuration(t, time.Now().Add(time.Hour), ts[0].Due, time.Minute)
	q.PushAfter("late", 5*time.Millisecond) // sooner: rescheduled
	waitStarted(t, r, "late")
	waitIdle(t, q)

	// A task that reschedules itself while running.
	var once sync.Once
	r2 := newRecorder()
	var q2 *TaskQueue
	r2.fail = func(key string, n int) error {
		once.Do(func() { q2.PushAfter(key, time.Millisecond) })
		return nil
	}
	q2 = NewTaskQueue(r2.run, TaskOptions{Logger: quiet})
	q2.Start(context.Background())
	defer q2.Stop()
	q2.Push("self")
	waitStarted(t, r2, "self")
	waitStarted(t, r2, "self")
	waitIdle(t, q2)
	require.Equal(t, 2, r2.count("self"))
}

func TestTaskQueueRemove(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	r.fail = func(string, int) error { return errors.New("fails") }
	q := NewTaskQueue(r.run, TaskOptions{Workers: 1, RetryMin: time.Millisecond, Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	q.Push("run")
	waitStarted(t, r, "run")
	q.Push("queued")
	q.PushAfter("delayed", time.Hour)
	q.PushAfter("vol1 arch0", time.Hour)
	q.PushAfter("vol1 arch1", time.Hour)
	q.RemoveFunc(func(k string) bool { return len(k) > 5 && k[:5] == "vol1 " })
	q.Remove("queued")
	q.Remove("delayed")
	q.Remove("run") // running: finishes, fails, but is not retried
	require.Equal(t, []TaskInfo{{Key: "run", State: "running"}}, q.Tasks())
	r.gate <- struct{}{}
	waitIdle(t, q)
	require.Equal(t, 1, r.count("run"))
	require.Equal(t, 0, r.count("queued"))
}

func TestTaskQueueStop(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	q := NewTaskQueue(r.run, TaskOptions{Workers: 1, Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	q.Start(ctx)
	q.Push("a")
	waitStarted(t, r, "a")
	q.Push("b")
	q.PushAfter("c", time.Millisecond)
	stopped := make(chan struct{})
	go func() {
		q.Stop()
		close(stopped)
	}()
	require.Eventually(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.stopped
	}, 10*time.Second, time.Millisecond)
	select {
	case <-stopped:
		t.Fatal("Stop returned while a task runs")
	case <-time.After(20 * time.Millisecond):
	}
	cancel() // force: the running task sees its context canceled
	<-stopped
	require.Equal(t, 0, r.count("b"))
	require.Equal(t, 0, r.count("c"))
	q.Push("d")
	require.Equal(t, 0, q.Len())
}

func TestTaskQueuePanic(t *testing.T) {
	r := newRecorder()
	r.fail = func(key string, n int) error {
		if n == 1 {
			panic("boom")
		}
		return nil
	}
	q := NewTaskQueue(r.run, TaskOptions{RetryMin: time.Millisecond, Logger: quiet})
	q.Start(context.Background())
	defer q.Stop()
	q.Push("p")
	waitStarted(t, r, "p")
	waitStarted(t, r, "p") // retried after the panic
	waitIdle(t, q)
	require.Equal(t, 2, r.count("p"))
}
