package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/api/apitest"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/testbin"
)

// e2eToken and e2eToken2 are the tokens of the tokens file.
var (
	e2eToken  = "e2e-" + strings.Repeat("7", 40)
	e2eToken2 = "e2e2-" + strings.Repeat("8", 40)
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// curlClient runs the curl binary, as a producer would, and checks every
// exchange against api/openapi.yaml.
type curlClient struct {
	base string
	dir  string
	n    int
	mu   sync.Mutex
}

type curlReply struct {
	status int
	header http.Header
	body   []byte
}

func (c *curlClient) do(t *testing.T, method, path, body string, hdr map[string]string, valid bool) curlReply {
	t.Helper()
	c.mu.Lock()
	c.n++
	n := c.n
	c.mu.Unlock()
	bodyFile := filepath.Join(c.dir, fmt.Sprintf("body-%d", n))
	headFile := filepath.Join(c.dir, fmt.Sprintf("head-%d", n))
	reqFile := filepath.Join(c.dir, fmt.Sprintf("req-%d", n))
	args := []string{"-sS", "--max-time", "30", "-X", method, "-o", bodyFile, "-D", headFile, "-w", "%{http_code}"}
	h := http.Header{}
	for k, v := range hdr {
		h.Set(k, v)
		args = append(args, "-H", k+": "+v)
	}
	if body != "" {
		require.NoError(t, os.WriteFile(reqFile, []byte(body), 0o600))
		args = append(args, "--data-binary", "@"+reqFile)
	}
	args = append(args, c.base+path)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "curl", args...).Output()
	require.NoError(t, err, "curl %s %s", method, path)
	status, err := strconv.Atoi(string(out))
	require.NoError(t, err)
	respBody, err := os.ReadFile(bodyFile)
	require.NoError(t, err)
	head, err := os.ReadFile(headFile)
	require.NoError(t, err)
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
	_, _ = tp.ReadLine() // status line
	mh, _ := tp.ReadMIMEHeader()
	apitest.Check(t, apitest.Exchange{Method: method, URL: c.base + path, Header: h, Body: []byte(body),
		Status: status, RespHeader: http.Header(mh), RespBody: respBody}, valid)
	return curlReply{status: status, header: http.Header(mh), body: respBody}
}

func auth(tok string, more ...string) map[string]string {
	h := map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"}
	for i := 0; i+1 < len(more); i += 2 {
		h[more[i]] = more[i+1]
	}
	return h
}

// startBin starts a built binary with env and returns its process; it is
// stopped with the test.
func startBin(t *testing.T, bin string, args []string, env []string, log string) *exec.Cmd {
	t.Helper()
	f, err := os.Create(log)
	require.NoError(t, err)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("%s log:\n%s", filepath.Base(bin), b)
		}
	})
	return cmd
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never ready", url)
}

// TestEndToEndCurl drives the built api binary with curl against a real
// redis-server, and a built worker (demo provider simulators) that
// processes what it enqueued: every response is checked against
// api/openapi.yaml.
func TestEndToEndCurl(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl not on PATH (.ci/run installs it): %v", err)
	}
	b := redistest.Real(t)
	apiBin := testbin.Build(t, "cmd/api")
	workerBin := testbin.Build(t, "cmd/worker")
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	require.NoError(t, os.WriteFile(tokens, []byte("portal:"+e2eToken+"\n"), 0o600))
	addr := freeAddr(t)
	apiCmd := startBin(t, apiBin, nil, []string{"REDIS_URL=" + b.URL, "API_TOKENS_FILE=" + tokens, "API_ADDR=" + addr, "API_RATE_LIMIT=off"},
		filepath.Join(dir, "api.log"))
	waitReady(t, "http://"+addr+"/readyz")
	c := &curlClient{base: "http://" + addr, dir: dir}

	// Single.
	r := c.do(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1001","reference":"e2e-single"}`, auth(e2eToken), true)
	require.Equal(t, http.StatusAccepted, r.status, "%s", r.body)
	var single struct{ ID, Type, Queue, State, Duplicate_of string }
	require.NoError(t, json.Unmarshal(r.body, &single))
	require.Equal(t, "pending", single.State)

	// Duplicate inside the dedup window.
	r = c.do(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1001","reference":"e2e-single"}`, auth(e2eToken), true)
	require.Equal(t, http.StatusOK, r.status)
	var dup struct {
		ID          string `json:"id"`
		DuplicateOf string `json:"duplicate_of"`
	}
	require.NoError(t, json.Unmarshal(r.body, &dup))
	require.Equal(t, single.ID, dup.ID)
	require.Equal(t, single.ID, dup.DuplicateOf)

	// Idempotent replay, and a reused key with another body.
	key := auth(e2eToken, "Idempotency-Key", "e2e-key-1")
	first := c.do(t, "POST", "/v1/resends", `{"provider":"digicert","order_id":"2001","locale":"en"}`, key, true)
	require.Equal(t, http.StatusAccepted, first.status)
	again := c.do(t, "POST", "/v1/resends", `{"provider":"digicert","order_id":"2001","locale":"en"}`, key, true)
	require.Equal(t, http.StatusAccepted, again.status)
	require.Equal(t, string(first.body), string(again.body))
	require.Equal(t, "true", again.header.Get("Idempotent-Replayed"))
	r = c.do(t, "POST", "/v1/resends", `{"provider":"digicert","order_id":"2002"}`, key, true)
	require.Equal(t, http.StatusUnprocessableEntity, r.status)

	// Concurrent requests with one key: one answer, one task.
	var wg sync.WaitGroup
	replies := make([]curlReply, 8)
	for i := range replies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i] = c.do(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1005"}`, auth(e2eToken, "Idempotency-Key", "e2e-concurrent"), true)
		}()
	}
	wg.Wait()
	for _, r := range replies {
		require.Equal(t, http.StatusAccepted, r.status, "every request answers the first response: %s", r.body)
		require.Equal(t, string(replies[0].body), string(r.body))
	}

	// Batch with bad lines.
	batch := `{"provider":"opensrs","order_id":"1010"}
{"provider":"opensrs","order_id":"not-a-number"}
{"provider":"digicert","order_id":"2010","domain_approval_emails":[{"domain":"example.com","email":"jane.doe@example"}]}
{"provider":"digicert","order_id":"2011"}
`
	r = c.do(t, "POST", "/v1/resends:batch", batch, auth(e2eToken, "Content-Type", "application/x-ndjson"), true)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	var br struct {
		Enqueued, Failed int
		Results          []struct {
			Index, Status int
			ID            string
			Error         *struct{ Field, Detail string }
		}
	}
	require.NoError(t, json.Unmarshal(r.body, &br))
	require.Equal(t, 2, br.Enqueued)
	require.Equal(t, 2, br.Failed)
	require.Equal(t, []int{202, 400, 400, 202}, []int{br.Results[0].Status, br.Results[1].Status, br.Results[2].Status, br.Results[3].Status})
	require.Equal(t, "order_id", br.Results[1].Error.Field)
	require.Equal(t, "domain_approval_emails[0].email", br.Results[2].Error.Field)
	require.NotContains(t, string(r.body), "jane.doe@")

	// Wrong or missing token, oversized body.
	r = c.do(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1"}`, auth("wrong-"+strings.Repeat("x", 40)), true)
	require.Equal(t, http.StatusUnauthorized, r.status)
	r = c.do(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1"}`, map[string]string{"Content-Type": "application/json"}, true)
	require.Equal(t, http.StatusUnauthorized, r.status)
	r = c.do(t, "GET", "/v1/resends/"+single.ID, "", map[string]string{}, true)
	require.Equal(t, http.StatusUnauthorized, r.status)
	big := `{"provider":"opensrs","order_id":"1","reference":"` + strings.Repeat("x", 200<<10) + `"}`
	r = c.do(t, "POST", "/v1/resends", big, auth(e2eToken), false)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.status)

	// The worker processes the tasks; the status shows every attempt and
	// the producer.
	whttp := freeAddr(t)
	startBin(t, workerBin, []string{"--demo", "--demo-samples=false", "--redis-url", b.URL, "--http-addr", whttp}, nil, filepath.Join(dir, "worker.log"))
	waitReady(t, "http://"+whttp+"/readyz")
	var st struct {
		State    string         `json:"state"`
		Payload  map[string]any `json:"payload"`
		Attempts []struct {
			Outcome  string `json:"outcome"`
			Producer string `json:"producer"`
		} `json:"attempts"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		r = c.do(t, "GET", "/v1/resends/"+single.ID, "", auth(e2eToken), true)
		require.Equal(t, http.StatusOK, r.status)
		require.NoError(t, json.Unmarshal(r.body, &st))
		if st.State == "completed" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	require.Equal(t, "completed", st.State, "%s", r.body)
	require.Equal(t, "portal", st.Payload["producer"])
	require.Len(t, st.Attempts, 1)
	require.Equal(t, "succeeded", st.Attempts[0].Outcome)
	require.Equal(t, "portal", st.Attempts[0].Producer)

	// SIGHUP re-reads the tokens file.
	require.NoError(t, os.WriteFile(tokens, []byte("portal2:"+e2eToken2+"\n"), 0o600))
	require.NoError(t, apiCmd.Process.Signal(syscall.SIGHUP))
	deadline = time.Now().Add(10 * time.Second)
	for {
		r = c.do(t, "GET", "/v1/resends/"+single.ID, "", auth(e2eToken2), true)
		if r.status == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.Equal(t, http.StatusOK, r.status, "the new token works after SIGHUP")
	r = c.do(t, "GET", "/v1/resends/"+single.ID, "", auth(e2eToken), true)
	require.Equal(t, http.StatusUnauthorized, r.status, "the removed token is refused after SIGHUP")

	// The access log names the producer, never the token.
	logs, err := os.ReadFile(filepath.Join(dir, "api.log"))
	require.NoError(t, err)
	require.Contains(t, string(logs), `"producer":"portal"`)
	require.NotContains(t, string(logs), e2eToken)
	require.NotContains(t, string(logs), e2eToken2)
}
