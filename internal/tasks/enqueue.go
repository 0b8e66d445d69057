package tasks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/rdb"
)

// Enqueue defaults, shared by the enqueue CLI and dlq replay.
const (
	DefaultMaxRetry    = 10
	DefaultTimeout     = 60 * time.Second
	DefaultDedupWindow = 10 * time.Minute
)

// Options are the per-task settings an enqueue request may carry.
type Options struct {
	MaxRetry int
	Timeout  time.Duration
	Delay    time.Duration
	// Retention keeps a completed task, with its result, readable for
	// `enqueue status` (0 means outcome.DefaultRetention).
	Retention time.Duration
	// DedupWindow: an identical request inside it returns the first task.
	// 0 turns deduplication off.
	DedupWindow time.Duration
	// Producer, when set, is recorded in the task's payload ("producer")
	// so that status, dead letters and outcomes name who enqueued it: the
	// HTTP API's token name. It is not part of the request's identity: the
	// same resend from two producers inside the window is one task.
	Producer string
}

// DefaultOptions are the documented defaults.
func DefaultOptions() Options {
	return Options{MaxRetry: DefaultMaxRetry, Timeout: DefaultTimeout, Retention: outcome.DefaultRetention, DedupWindow: DefaultDedupWindow}
}

// Validate checks the options, naming the flag-level field at fault.
// Durations must be what asynq and Redis store exactly, so that the task
// does what was asked: asynq keeps Timeout and Retention in whole seconds
// and schedules a delayed task at a whole unix second; the dedup mark's TTL
// is in milliseconds.
func (o Options) Validate() error {
	switch {
	case o.MaxRetry < 0:
		return fieldErr("max-retry", "must be 0 or more")
	case o.Timeout < time.Second:
		return fieldErr("timeout", "must be at least 1s (asynq stores whole seconds)")
	case o.Timeout%time.Second != 0:
		return fieldErr("timeout", "must be whole seconds (asynq stores whole seconds), got %v", o.Timeout)
	case o.Delay < 0:
		return fieldErr("delay", "must not be negative")
	case o.Delay%time.Second != 0:
		return fieldErr("delay", "must be whole seconds (asynq schedules at whole seconds), got %v", o.Delay)
	case o.DedupWindow < 0:
		return fieldErr("dedup-window", "must not be negative")
	case o.DedupWindow > 0 && o.DedupWindow < time.Second:
		return fieldErr("dedup-window", "must be 0 (off) or at least 1s")
	case o.DedupWindow%time.Millisecond != 0:
		return fieldErr("dedup-window", "must be whole milliseconds (Redis stores the mark's TTL in ms), got %v", o.DedupWindow)
	case o.Retention < 0:
		return fieldErr("retention", "must not be negative")
	case o.Retention%time.Second != 0:
		return fieldErr("retention", "must be whole seconds (asynq stores whole seconds), got %v", o.Retention)
	case o.Producer != "" && ValidateProducer(o.Producer) != nil:
		return ValidateProducer(o.Producer)
	case o.DedupWindow > 0 && o.retention() < o.DedupWindow:
		// Else a completed task could vanish while its mark still names
		// it, and the next identical request would resend.
		return fieldErr("retention", "must be at least --dedup-window (%v), got %v", o.DedupWindow, o.Retention)
	}
	return nil
}

// retention is the effective retention: 0 means the default.
func (o Options) retention() time.Duration {
	if o.Retention == 0 {
		return outcome.DefaultRetention
	}
	return o.Retention
}

// Enqueued is the answer to one enqueue request.
type Enqueued struct {
	ID string
	// Duplicate is set when an identical request inside the dedup window
	// already created task ID; nothing new was enqueued.
	Duplicate bool
}

// Enqueuer puts validated tasks into Redis, deduplicating identical
// requests. It is safe for concurrent use.
type Enqueuer struct {
	client *asynq.Client
	rdb    *rdb.Client
	store  *outcome.Store   // attempt histories: proof that a task existed
	grace  time.Duration    // DedupGrace
	now    func() time.Time // tests move it
}

// NewEnqueuer returns an Enqueuer sharing one go-redis client with asynq.
func NewEnqueuer(c redis.UniversalClient) *Enqueuer {
	return &Enqueuer{client: asynq.NewClientFromRedisClient(c), rdb: rdb.New(c), store: outcome.NewStore(c, 0), grace: DedupGrace, now: time.Now}
}

// NewTask validates p and builds its asynq task with opts applied.
func NewTask(p Payload, o Options, id string) (*asynq.Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Producer != "" {
		p = p.withProducer(o.Producer)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	if err := validatePayloadSize(b); err != nil {
		return nil, err
	}
	return asynq.NewTask(p.Type(), b, taskOptions(p, o, id)...), nil
}

func taskOptions(p Payload, o Options, id string) []asynq.Option {
	opts := []asynq.Option{
		asynq.Queue(string(p.Provider())),
		asynq.MaxRetry(o.MaxRetry),
		asynq.Timeout(o.Timeout),
		asynq.Retention(o.retention()),
	}
	if id != "" {
		opts = append(opts, asynq.TaskID(id))
	}
	if o.Delay > 0 {
		opts = append(opts, asynq.ProcessIn(o.Delay))
	}
	return opts
}

// dedupHash identifies a request: same type and same payload bytes.
func dedupHash(taskType string, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(taskType))
	h.Write([]byte{0})
	h.Write(payload)
	return hex.EncodeToString(h.Sum(nil))
}

// requestHash is the dedup hash of the request that built task from p: its
// payload without the producer, so that a request is identified by what it
// asks for, and the hash of a request without one is what it always was.
func requestHash(p Payload, task *asynq.Task) (string, error) {
	b := task.Payload()
	if p.From() != "" || bytes.Contains(b, []byte(`"producer"`)) {
		var err error
		if b, err = json.Marshal(p.withProducer("")); err != nil {
			return "", err
		}
	}
	return dedupHash(task.Type(), b), nil
}

// Dedup timing. enqueueCallLimit bounds one request from setting its mark
// to its last write to Redis; DedupGrace is how long a mark naming a task
// that does not exist is still trusted to belong to a request in flight.
// The gap between them (50 s) is for commands already written when the
// limit struck: Redis runs what it has read in order, so only a stalled
// server or a network that holds bytes that long can land one later.
const (
	enqueueCallLimit = 10 * time.Second
	DedupGrace       = time.Minute
	checkTimeout     = 5 * time.Second
)

// ErrDedupBusy is returned when a dedup mark changed under every attempt to
// read or take it over (many identical requests at once): retry.
var ErrDedupBusy = errors.New("dedup mark kept changing; retry")

// UncertainError says that a task may or may not exist: Redis failed in a
// way that hides whether the enqueue ran, or an identical request holds the
// dedup mark and may still be enqueueing. ID is the task to look for
// (`enqueue status ID`); retrying the same request is safe, it never makes
// a second task.
type UncertainError struct {
	ID  string
	Err error // the cause, nil when another request holds the mark
}

func (e *UncertainError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("may have been enqueued as %s (an identical request is in flight)", e.ID)
	}
	return fmt.Sprintf("may have been enqueued as %s: %v", e.ID, e.Err)
}

func (e *UncertainError) Unwrap() error { return e.Err }

// A dedup mark's value is "<task id> <unix ms when set>"; marks written
// before the time was stored hold the ID alone.
func markValue(id string, at time.Time) string {
	return id + " " + strconv.FormatInt(at.UnixMilli(), 10)
}

func parseMark(v string) (id string, at time.Time, ok bool) {
	id, ms, found := strings.Cut(v, " ")
	if !found {
		return id, time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return id, time.Time{}, false
	}
	return id, time.UnixMilli(n), true
}

// Enqueue validates p and enqueues it unless an identical request was
// enqueued within the dedup window, whose task it then returns with
// Duplicate set. A returned ID always names a task that exists.
//
// Deduplication does not use asynq's Unique or TaskID: both outlive the
// window (a Unique lock survives archiving, a TaskID conflicts with retained
// and archived tasks). A project-owned SET NX mark that expires with the
// window, holding the first task's fresh random ID and the time it was set,
// dedupes exactly the window and nothing after it.
//
// The mark and asynq's enqueue script are two Redis calls; they cannot be
// one, since the enqueue script and its message encoding are asynq's own.
// What keeps the pair honest:
//   - A mark is trusted only when its task exists. A request finding a mark
//     whose task does not exist takes it over (compare-and-set) and enqueues
//     if the first request is known to have failed (a failure note)
//     or the mark is older than DedupGrace. Younger, the first request may
//     still be enqueueing: within its call limit Enqueue waits for its task
//     to appear (then it is a duplicate); after it, the answer is an
//     *UncertainError, never a duplicate.
//   - When the enqueue call fails, Enqueue looks for the task: found means
//     the enqueue ran and only the reply was lost (success); a refusal by
//     Redis means it did not run (the mark is released); anything else
//     keeps the mark and returns an *UncertainError naming the task.
//
// The window that remains: a request whose enqueue command reaches Redis
// more than DedupGrace after its mark was set (a server stalled that long,
// or a network holding written bytes that long) can land beside the task of
// a request that took its mark over, giving two tasks. The mark holds the
// enqueuing host's clock, so hosts must agree on the time to well within
// DedupGrace. A mark whose task ran and was deleted since (dlq delete, the
// dashboard, asynq's archive cap) is free at once, since nothing of it can
// still land; dlq replay moves the mark to the replayed task (EnqueueRaw).
// A completed task outlives its mark: Options.Validate keeps the retention
// at least as long as the window.
func (e *Enqueuer) Enqueue(ctx context.Context, p Payload, o Options) (Enqueued, error) {
	id := uuid.NewString()
	task, err := NewTask(p, o, id)
	if err != nil {
		return Enqueued{}, err
	}
	return e.enqueueTask(ctx, p, task, string(p.Provider()), id, o, nil)
}

// presetMark is a dedup mark EnqueueBatch has already set for a task.
type presetMark struct {
	hash, mark string
	setAt      time.Time
}

// enqueueTask is Enqueue once task id is built: take its dedup mark (unless
// pre holds it already set), enqueue, settle.
func (e *Enqueuer) enqueueTask(ctx context.Context, p Payload, task *asynq.Task, queue, id string, o Options, pre *presetMark) (Enqueued, error) {
	if o.DedupWindow == 0 {
		if err := e.enqueue(ctx, task, queue, id); err != nil {
			return Enqueued{}, err
		}
		return Enqueued{ID: id}, nil
	}
	var (
		hash, mark string
		setAt      time.Time
	)
	if pre != nil {
		hash, mark, setAt = pre.hash, pre.mark, pre.setAt
	} else {
		var dup Enqueued
		var err error
		if hash, err = requestHash(p, task); err != nil {
			return Enqueued{}, err
		}
		mark, setAt, dup, err = e.takeMark(ctx, hash, id, queue, o.DedupWindow)
		if err != nil || dup.ID != "" {
			return dup, err
		}
	}
	// The deadline counts from the mark, so that DedupGrace safely exceeds
	// the whole call.
	ectx, cancel := context.WithDeadline(ctx, setAt.Add(enqueueCallLimit))
	defer cancel()
	if err := ectx.Err(); err != nil { // nothing sent yet: give the mark back
		_ = e.rdb.ReleaseDedupMark(context.WithoutCancel(ctx), hash, mark)
		if pre != nil && ctx.Err() == nil {
			// A batch's mark aged past the call limit while the tasks
			// before it were enqueued: start again with a fresh mark.
			return e.enqueueTask(ctx, p, task, queue, id, o, nil)
		}
		return Enqueued{}, err
	}
	err := e.enqueue(ectx, task, queue, id)
	var refused *refusedError
	if errors.As(err, &refused) {
		bg, cancelBg := context.WithTimeout(context.WithoutCancel(ctx), checkTimeout)
		defer cancelBg()
		if rerr := e.rdb.ReleaseDedupMark(bg, hash, mark); rerr != nil {
			_ = e.rdb.NoteDedupFailed(bg, hash, id, o.DedupWindow)
		}
	}
	if err != nil {
		return Enqueued{}, err
	}
	return Enqueued{ID: id}, nil
}

// enqueueChunk enqueues each of ps with the same options and answers as
// Enqueue would, in order (a nil payload gets the zero Enqueued and no
// error, for the caller to skip). The dedup marks of the whole batch are
// set in one pipelined round trip instead of one each; a payload whose mark
// could not be set there (an identical request holds it, or the reply was
// lost) takes Enqueue's own path, so duplicates, marks to wait for or take
// over, and uncertain outcomes are settled exactly as by Enqueue. The tasks
// are enqueued one after the other in order, so a line repeated within the
// batch finds its first occurrence's task and is its duplicate.
func (e *Enqueuer) enqueueChunk(ctx context.Context, ps []Payload, o Options) ([]Enqueued, []error) {
	res, errs := make([]Enqueued, len(ps)), make([]error, len(ps))
	type item struct {
		i       int
		task    *asynq.Task
		queue   string
		p       Payload
		id      string
		hash    string
		preMark *presetMark
	}
	items := make([]item, 0, len(ps))
	for i, p := range ps {
		if p == nil {
			continue
		}
		id := uuid.NewString()
		task, err := NewTask(p, o, id)
		if err != nil {
			errs[i] = err
			continue
		}
		var hash string
		if o.DedupWindow > 0 {
			if hash, err = requestHash(p, task); err != nil {
				errs[i] = err
				continue
			}
		}
		items = append(items, item{i: i, task: task, queue: string(p.Provider()), p: p, id: id, hash: hash})
	}
	if o.DedupWindow > 0 && len(items) > 1 {
		setAt := e.now()
		hashes, values := make([]string, len(items)), make([]string, len(items))
		for k := range items {
			hashes[k], values[k] = items[k].hash, markValue(items[k].id, setAt)
		}
		set, _ := e.rdb.SetDedupMarks(ctx, hashes, values, o.DedupWindow)
		for k := range items {
			if set[k] {
				items[k].preMark = &presetMark{hash: hashes[k], mark: values[k], setAt: setAt}
			}
		}
	}
	for _, it := range items {
		res[it.i], errs[it.i] = e.enqueueTask(ctx, it.p, it.task, it.queue, it.id, o, it.preMark)
	}
	return res, errs
}

// refusedError is Redis refusing an enqueue: nothing was enqueued.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return "not enqueued, Redis refused: " + e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// enqueue runs asynq's enqueue of task id and settles what happened: nil
// when the task exists, a *refusedError when it certainly does not, an
// *UncertainError when that cannot be told.
func (e *Enqueuer) enqueue(ctx context.Context, task *asynq.Task, queue, id string) error {
	_, err := e.client.EnqueueContext(ctx, task)
	if err == nil || errors.Is(err, asynq.ErrTaskIDConflict) {
		// A conflict on a fresh random ID means an earlier try of this
		// very call (go-redis retries after a lost reply) created it.
		return nil
	}
	if refusedByRedis(err) {
		return &refusedError{err}
	}
	// The reply may have been lost after the script ran.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), checkTimeout)
	defer cancel()
	if found, xerr := e.rdb.TaskExists(bg, queue, id); xerr == nil && found {
		return nil
	}
	return &UncertainError{ID: id, Err: err}
}

// takeMark sets the dedup mark for task id and returns its value and the
// time it holds, or returns the existing task an identical request created
// (dup.ID set).
//
// A mark whose task does not exist yet, set less than enqueueCallLimit ago,
// is most often an identical request enqueueing right now (a batch with a
// line twice): takeMark polls until its task appears, its mark goes, or its
// call limit passes, rather than answer "unknown" for a few milliseconds'
// gap.
func (e *Enqueuer) takeMark(ctx context.Context, hash, id, queue string, window time.Duration) (mark string, setAt time.Time, dup Enqueued, err error) {
	fail := func(err error) (string, time.Time, Enqueued, error) { return "", time.Time{}, Enqueued{}, err }
	poll := 5 * time.Millisecond
	for busy := 0; busy < 5; {
		setAt = e.now()
		mark = markValue(id, setAt)
		ok, err := e.rdb.SetDedupMark(ctx, hash, mark, window)
		if err != nil {
			return fail(fmt.Errorf("redis: %w", err))
		}
		if ok {
			return mark, setAt, Enqueued{}, nil
		}
		st, err := e.rdb.DedupMark(ctx, hash)
		if err != nil {
			return fail(fmt.Errorf("redis: %w", err))
		}
		if !st.Exists { // expired or released meanwhile
			busy++
			continue
		}
		cur := st.Value
		first, firstAt, stamped := parseMark(cur)
		if first == id {
			// Our own SET NX ran but its reply was lost and go-redis
			// retried it.
			return cur, firstAt, Enqueued{}, nil
		}
		found, err := e.rdb.TaskExists(ctx, queue, first)
		if err != nil {
			return fail(fmt.Errorf("redis: %w", err))
		}
		if found {
			return "", time.Time{}, Enqueued{ID: first, Duplicate: true}, nil
		}
		if st.FailedErr != nil {
			return fail(fmt.Errorf("redis: %w", st.FailedErr))
		}
		gone, err := e.existed(ctx, first)
		if err != nil {
			return fail(err)
		}
		// A task that ran and was deleted since (dlq delete, the
		// dashboard, asynq's archive cap) has no enqueue left in flight:
		// its mark is free at once. Otherwise wait out the first request.
		if st.Failed != first && !gone {
			if !stamped {
				// A mark from before set times were stored: its age is
				// the window minus what is left, assuming the same window.
				if st.TTLErr != nil {
					return fail(fmt.Errorf("redis: %w", st.TTLErr))
				}
				firstAt = e.now().Add(st.TTL - window)
			}
			age := e.now().Sub(firstAt)
			if age < enqueueCallLimit {
				select {
				case <-ctx.Done():
					return fail(&UncertainError{ID: first, Err: ctx.Err()})
				case <-time.After(poll):
				}
				poll = min(2*poll, 200*time.Millisecond)
				continue
			}
			if age < e.grace {
				return fail(&UncertainError{ID: first})
			}
		}
		ok, err = e.rdb.TakeOverDedupMark(ctx, hash, cur, mark, window)
		if err != nil {
			return fail(fmt.Errorf("redis: %w", err))
		}
		if ok {
			return mark, setAt, Enqueued{}, nil
		}
		busy++
	}
	return fail(ErrDedupBusy)
}

// existed reports whether task id has an attempt history, so was enqueued
// at some point.
func (e *Enqueuer) existed(ctx context.Context, id string) (bool, error) {
	as, err := e.store.Attempts(ctx, id)
	if err != nil {
		return false, err
	}
	return len(as) > 0, nil
}

// repoint hands the dedup mark of (taskType, payload) to task id when the
// task it names is gone after having run: the dead task that id replays.
// An identical request inside the window is then a duplicate of the replay,
// not of a deleted task. Best effort: the replay stands either way.
func (e *Enqueuer) repoint(ctx context.Context, taskType string, payload []byte, queue, id string) {
	hash := dedupHash(taskType, payload)
	cur, err := e.rdb.GetDedupMark(ctx, hash)
	if err != nil {
		return
	}
	first, _, _ := parseMark(cur)
	if first == id {
		return
	}
	if found, err := e.rdb.TaskExists(ctx, queue, first); err != nil || found {
		return
	}
	if gone, err := e.existed(ctx, first); err != nil || !gone {
		return
	}
	_ = e.rdb.RepointDedupMark(ctx, hash, cur, markValue(id, e.now()))
}

// refusedByRedis reports whether err is Redis refusing the enqueue with an
// error reply that go-redis does not retry, so the command did not run and
// no earlier try of it did. asynq flattens script errors to text ("redis
// eval error: NOPERM …"), hence the look at the message.
func refusedByRedis(err error) bool {
	var re redis.Error
	if errors.As(err, &re) {
		return refusalCode(re.Error())
	}
	msg := err.Error()
	const evalPrefix = "redis eval error: "
	i := strings.Index(msg, evalPrefix)
	if i < 0 {
		return false
	}
	return refusalCode(msg[i+len(evalPrefix):])
}

func refusalCode(reply string) bool {
	code, _, _ := strings.Cut(reply, " ")
	switch code {
	case "NOPERM", "NOAUTH", "WRONGPASS", "NOSCRIPT", "OOM", "MISCONF", "WRONGTYPE", "CROSSSLOT", "EXECABORT":
		return true
	case "ERR":
		// "ERR max number of clients reached" is retried by go-redis: an
		// earlier try may have run.
		return !strings.Contains(reply, "max number of clients")
	}
	return false
}

// EnqueueRaw enqueues an already-encoded task of a known type with a fresh
// ID and budget, bypassing deduplication: it is how dead letters are
// replayed, and the payload is validated again by the handler. When the
// request's dedup mark names a task that ran and is gone (the dead task
// being replayed, deleted first), the mark moves to the new task.
func (e *Enqueuer) EnqueueRaw(ctx context.Context, taskType string, payload []byte, o Options) (string, error) {
	id := uuid.NewString()
	if err := e.EnqueueRawID(ctx, id, taskType, payload, o); err != nil {
		return "", err
	}
	return id, nil
}

// EnqueueRawID is EnqueueRaw with the caller's task ID. An ID asynq still
// holds (any state, completed tasks during their retention) is not enqueued
// again and counts as enqueued (nil): dlq replay derives the ID from the
// dead letter's, so that however many replays of one letter run, or retry
// after a lost reply, asynq holds at most one successor.
func (e *Enqueuer) EnqueueRawID(ctx context.Context, id, taskType string, payload []byte, o Options) error {
	p, err := Decode(taskType, payload)
	if err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	// Keep the exact bytes: they are what upstream sent.
	task := asynq.NewTask(taskType, payload, taskOptions(p, o, id)...)
	if err := e.enqueue(ctx, task, string(p.Provider()), id); err != nil {
		return err
	}
	hashed := payload
	if p.From() != "" { // the request's identity leaves the producer out (requestHash)
		if b, err := json.Marshal(p.withProducer("")); err == nil {
			hashed = b
		}
	}
	e.repoint(context.WithoutCancel(ctx), taskType, hashed, string(p.Provider()), id)
	return nil
}

// Close releases the Enqueuer. The shared Redis client stays open: its
// owner closes it (asynq's Close only reports that it is shared).
func (e *Enqueuer) Close() error {
	_ = e.client.Close()
	return nil
}
