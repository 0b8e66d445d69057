package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

// seedMany leaves n dead letters as the worker leaves them: records written
// by the handler, tasks in asynq's archive.
func (e *testEnv) seedMany(t *testing.T, n int) []string {
	t.Helper()
	ctx := t.Context()
	client := asynq.NewClientFromRedisClient(e.rdb)
	defer client.Close()
	for i := range n {
		require.NoError(t, deadOne(ctx, e, client, i))
	}
	archived, err := e.insp.ArchiveAllPendingTasks(tasks.QueueOpenSRS)
	require.NoError(t, err)
	require.Equal(t, n, archived)
	all, err := e.store.DeadLetters(ctx)
	require.NoError(t, err)
	require.Len(t, all, n)
	ids := make([]string, n)
	for i, d := range all {
		ids[i] = d.ID
	}
	return ids
}

// proc is one dlq process.
type proc struct {
	args           []string
	code           int
	stdout, stderr bytes.Buffer
}

// runProcs starts every dlq process at once against url and waits for all.
func runProcs(t *testing.T, url string, argss ...[]string) []*proc {
	t.Helper()
	bin := testbin.Build(t, "cmd/dlq")
	procs := make([]*proc, len(argss))
	cmds := make([]*exec.Cmd, len(argss))
	for i, args := range argss {
		p := &proc{args: args}
		c := exec.CommandContext(t.Context(), bin, args...)
		c.Env = append(os.Environ(), "REDIS_URL="+url)
		c.Stdout, c.Stderr = &p.stdout, &p.stderr
		procs[i], cmds[i] = p, c
	}
	for _, c := range cmds {
		require.NoError(t, c.Start())
	}
	for i, c := range cmds {
		err := c.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			procs[i].code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
	}
	return procs
}

// A process that starts listing after the others handled every letter
// finds none: also a skip (each dlq process first runs the sweep and the
// one-off legacy-key scan, so a slow start on a loaded machine happens).
var skipLine = regexp.MustCompile(`^dlq (replay|delete): (\S+: skipped: (already replayed \(as \S+\) by another operator|already deleted by another operator|being replayed by another operator|being deleted by another operator)|no dead letters match)$`)

// requireOnlySkips: a process's stderr holds nothing but skip lines.
func requireOnlySkips(t *testing.T, p *proc) {
	t.Helper()
	for line := range strings.Lines(p.stderr.String()) {
		require.Regexp(t, skipLine, strings.TrimSuffix(line, "\n"), "dlq %v", p.args)
	}
}

func (e *testEnv) pending(t *testing.T) int {
	t.Helper()
	qi, err := e.insp.GetQueueInfo(tasks.QueueOpenSRS)
	require.NoError(t, err)
	return qi.Pending
}

// requireNoneLeft: no record left, and a last replay --all finds nothing.
func (e *testEnv) requireNoneLeft(t *testing.T) {
	t.Helper()
	n, err := e.store.CountDead(t.Context())
	require.NoError(t, err)
	require.Zero(t, n, "dead-letter records left (resurrected?)")
	p := runProcs(t, e.url, []string{"replay", "--all"})[0]
	require.Equal(t, exitOK, p.code, p.stderr.String())
	require.Empty(t, p.stdout.String(), "a final replay --all replays nothing")
	require.Equal(t, "dlq replay: no dead letters match\n", p.stderr.String())
}

// TestReplayProcessesRace: several `dlq replay --all` processes over the same
// 300 dead letters replay each exactly once between them.
func TestReplayProcessesRace(t *testing.T) {
	t.Parallel()
	const n, procs = 300, 3
	e := setup(t, redistest.Real(t))
	ids := e.seedMany(t, n)

	argss := make([][]string, procs)
	for i := range argss {
		argss[i] = []string{"replay", "--all"}
	}
	newIDs := map[string]string{}
	counts := make([]int, procs)
	for i, p := range runProcs(t, e.url, argss...) {
		require.Equal(t, exitOK, p.code, "process %d: %s", i, p.stderr.String())
		requireOnlySkips(t, p)
		for old, nu := range replayLines(t, p.stdout.String()) {
			_, dup := newIDs[old]
			require.False(t, dup, "%s printed by two processes", old)
			newIDs[old] = nu
			counts[i]++
		}
	}
	require.Len(t, newIDs, n, "one line per dead letter across processes")
	seen := map[string]bool{}
	for _, id := range ids {
		nu := newIDs[id]
		require.NotEmpty(t, nu, "%s not replayed", id)
		require.False(t, seen[nu])
		seen[nu] = true
		require.Equal(t, asynq.TaskStatePending, e.taskInfo(t, tasks.QueueOpenSRS, nu).State)
	}
	require.Equal(t, n, e.pending(t), "one task per dead letter")
	e.requireNoneLeft(t)
	t.Logf("lines per process: %v", counts)
}

// TestReplayRacesSweeps: a replay while `dlq list` processes and worker
// sweeps (Reconcile) run over and over: no dead letter comes back.
func TestReplayRacesSweeps(t *testing.T) {
	t.Parallel()
	const n = 1000
	b := redistest.Real(t)
	e := setup(t, b)
	e.seedMany(t, n)

	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	sweeps := 0
	var mu sync.Mutex
	for range 3 {
		rdb := b.Client(t)
		svc := deadletter.New(rdb, outcome.NewStore(rdb, 0))
		wg.Go(func() {
			defer svc.Close()
			for ctx.Err() == nil {
				if _, err := svc.Reconcile(ctx); err != nil && ctx.Err() == nil {
					t.Error(err)
				}
				mu.Lock()
				sweeps++
				mu.Unlock()
			}
		})
	}
	bin := testbin.Build(t, "cmd/dlq")
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				c := exec.CommandContext(ctx, bin, "list", "--json")
				c.Env = append(os.Environ(), "REDIS_URL="+e.url)
				if out, err := c.CombinedOutput(); err != nil && ctx.Err() == nil {
					t.Errorf("dlq list: %v: %s", err, out)
				}
			}
		})
	}
	p := runProcs(t, e.url, []string{"replay", "--all"})[0]
	stop()
	wg.Wait()

	require.Equal(t, exitOK, p.code, p.stderr.String())
	require.Len(t, replayLines(t, p.stdout.String()), n)
	require.Equal(t, n, e.pending(t))
	e.requireNoneLeft(t)
	t.Logf("%d sweeps ran during the replay", sweeps)
}

// TestReplayRacesDeleteProcesses: replay and delete processes over the same
// dead letters: each is replayed once or deleted once, never both, and
// never comes back.
func TestReplayRacesDeleteProcesses(t *testing.T) {
	t.Parallel()
	const n = 300
	e := setup(t, redistest.Real(t))
	ids := e.seedMany(t, n)

	replayed := map[string]int{}
	deleted := map[string]int{}
	for _, p := range runProcs(t, e.url, []string{"replay", "--all"}, []string{"delete", "--all"},
		[]string{"replay", "--all"}, []string{"delete", "--all"}) {
		require.Equal(t, exitOK, p.code, "dlq %v: %s", p.args, p.stderr.String())
		requireOnlySkips(t, p)
		if p.args[0] == "replay" {
			for old := range replayLines(t, p.stdout.String()) {
				replayed[old]++
			}
			continue
		}
		for _, id := range strings.Fields(p.stdout.String()) {
			deleted[id]++
		}
	}
	for _, id := range ids {
		require.Equal(t, 1, replayed[id]+deleted[id], "%s: replayed %d, deleted %d", id, replayed[id], deleted[id])
		tomb, err := e.store.Tombstone(t.Context(), id)
		require.NoError(t, err)
		if replayed[id] == 1 {
			require.Equal(t, outcome.OpReplay, tomb)
			require.NotNil(t, e.taskInfo(t, tasks.QueueOpenSRS, deadletter.ReplayID(id)))
		} else {
			require.Equal(t, outcome.OpDelete, tomb)
		}
		require.Nil(t, e.taskInfo(t, tasks.QueueOpenSRS, id), "archived task gone")
	}
	require.Equal(t, len(replayed), e.pending(t), "one task per replayed letter")
	e.requireNoneLeft(t)
	t.Logf("%d replayed, %d deleted", len(replayed), len(deleted))
}
