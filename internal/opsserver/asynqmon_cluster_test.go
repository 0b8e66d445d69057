package opsserver

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// TestAsynqmonOnCluster records what the dashboard (asynqmon v0.7.2, on
// asynq.RedisClusterClientOpt) can show on a real 3-master Redis Cluster;
// the README's "Redis Cluster" section quotes it.
func TestAsynqmonOnCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.NewCluster(t)
	opt := asynq.RedisClusterClientOpt{Addrs: cl.Addrs}
	c := asynq.NewClient(opt)
	defer c.Close()
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	task, err := tasks.NewTask(tasks.NewOpenSRSPayload("4242", "", false), tasks.DefaultOptions(), "")
	require.NoError(t, err)
	info, err := c.EnqueueContext(t.Context(), task)
	require.NoError(t, err)
	require.NoError(t, insp.ArchiveTask(info.Queue, info.ID))

	h := asynqmon.New(asynqmon.Options{RootPath: "/d", RedisConnOpt: opt})
	defer h.Close()
	srv := httptest.NewServer(h)
	defer srv.Close()
	q := info.Queue
	tests := []struct {
		method, path string
		want         int
		body         string // a substring of the answer
	}{
		{"GET", "/d/api/queues", http.StatusOK, `"queue":"` + q + `"`},
		{"GET", "/d/api/queues/" + q, http.StatusOK, `"archived":1`},
		{"GET", "/d/api/queue_stats", http.StatusOK, ""},
		{"GET", "/d/api/queues/" + q + "/archived_tasks", http.StatusOK, info.ID},
		{"GET", "/d/api/queues/" + q + "/tasks/" + info.ID, http.StatusOK, info.ID},
		{"GET", "/d/api/servers", http.StatusOK, ""},
		{"GET", "/d/api/redis_info", http.StatusOK, "cluster"},
		{"POST", "/d/api/queues/" + q + "/archived_tasks/" + info.ID + ":run", http.StatusNoContent, ""},
		{"GET", "/d/api/queues/" + q + "/pending_tasks", http.StatusOK, info.ID},
	}
	for _, tc := range tests {
		req, err := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
		require.NoError(t, err)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var b strings.Builder
		_, _ = io.Copy(&b, res.Body)
		res.Body.Close()
		t.Logf("%s %s: %d %.200s", tc.method, tc.path, res.StatusCode, b.String())
		require.Equal(t, tc.want, res.StatusCode, "%s %s: %s", tc.method, tc.path, b.String())
		require.Contains(t, b.String(), tc.body, "%s %s", tc.method, tc.path)
	}
}
