package opsserver_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/opsserver"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// chromiumPath finds Debian's chromium (or another Chrome), skipping the
// test when there is none unless CERTMAIL_REQUIRE_BROWSER=1.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium found (/usr/bin/chromium or chromium/google-chrome on PATH); install it with `apt-get install -y chromium` to run the dashboard browser test"
	if os.Getenv("CERTMAIL_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg + " (CERTMAIL_REQUIRE_BROWSER=1)")
	}
	t.Skip(msg)
	return ""
}

// artifactsDir is CERTMAIL_ARTIFACTS_DIR, or a directory under the test's
// temporary directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CERTMAIL_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// answerAuth makes the tab of ctx answer every basic auth challenge with
// resp (docs/asynq.md §14: Fetch.enable with handleAuthRequests, then
// ContinueWithAuth). Every paused request must be continued, or the page
// hangs.
func answerAuth(t *testing.T, ctx context.Context, resp fetch.AuthChallengeResponse) {
	t.Helper()
	paused := chromedp.Events(ctx, fetch.RequestPaused)
	challenges := chromedp.Events(ctx, fetch.AuthRequired)
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID})
		}
	}()
	go func() {
		for ev, err := range challenges {
			if err != nil {
				return
			}
			r := resp
			_, _ = chromedp.Call(ctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: ev.RequestID, AuthChallengeResponse: &r})
		}
	}()
	_, err := chromedp.Call(ctx, fetch.Enable, fetch.EnableParams{HandleAuthRequests: new(true)})
	require.NoError(t, err)
}

// TestDashboardBrowser drives the real asynqmon UI in headless Chromium.
// It runs on miniredis only: the Redis side of every dashboard call is
// covered on both backends by the API tests above, and this test checks
// what the browser renders and does, within a ~60 s budget.
func TestDashboardBrowser(t *testing.T) {
	t.Parallel()
	execPath := chromiumPath(t)
	b := redistest.Mini(t)
	rdb := b.Client(t)
	s := seed(t, rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)

	ops, err := opsserver.New(opsserver.Config{
		RedisURL: b.URL, Redis: rdb, Running: func() bool { return true },
		Dashboard: opsserver.DashboardConfig{User: testUser, Password: testPassword},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ops.Close() })
	// Record the last status of the manifest fetch, which Chrome makes
	// without credentials unless the link says crossorigin="use-credentials".
	var manifestStatus atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { // listens on 127.0.0.1
		if r.URL.Path != "/dashboard/manifest.json" {
			ops.Handler().ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		ops.Handler().ServeHTTP(rec, r)
		manifestStatus.Store(int64(rec.code))
	}))
	t.Cleanup(srv.Close)
	require.True(t, strings.HasPrefix(srv.URL, "http://127.0.0.1:"))
	shot := filepath.Join(artifactsDir(t), "dashboard-archived.png")

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.WindowSize(1400, 900),
		// Nothing leaves the machine: only 127.0.0.1 resolves.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	require.NoError(t, chromedp.Do(browserCtx), "start chromium")

	archivedURL := srv.URL + "/dashboard/queues/digicert?status=archived"
	idPrefix := strings.SplitN(s.DigiCertDead, "-", 2)[0]
	row := `[...document.querySelectorAll("tbody tr")].find(r => r.textContent.includes("` + idPrefix + `"))`

	t.Run("LoginRequired", func(t *testing.T) {
		// Its own browser context: the HTTP auth cache is per context.
		tab, cancel := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext())
		defer cancel()
		answerAuth(t, tab, fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseCancelAuth})
		resp, err := chromedp.Run(tab, chromedp.NavigateResponse(archivedURL))
		require.NoError(t, err)
		require.Equal(t, int64(http.StatusUnauthorized), resp.Status)
		text, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.body.innerText`))
		require.NoError(t, err)
		require.Contains(t, text, "unauthorized")
		html, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
		require.NoError(t, err)
		require.NotContains(t, html, "Asynq", "the dashboard must not render without credentials")
		require.NotContains(t, html, idPrefix)
	})

	// The browser's default context, whose auth cache LoginRequired did not
	// touch. (Chrome fetches no manifest in a WithNewBrowserContext context,
	// which would leave the manifest fix untested.)
	tab, cancelTab := chromedp.NewContext(browserCtx)
	t.Cleanup(cancelTab)
	answerAuth(t, tab, fetch.AuthChallengeResponse{
		Response: fetch.AuthChallengeResponseResponseProvideCredentials, Username: testUser, Password: testPassword,
	})

	t.Run("Home", func(t *testing.T) {
		// Logging in at the root first lets Chrome's auth cache cover the
		// whole /dashboard/ space, so later requests carry the header at once.
		resp, err := chromedp.Run(tab, chromedp.NavigateResponse(srv.URL+"/dashboard/"))
		require.NoError(t, err)
		require.Equal(t, int64(http.StatusOK), resp.Status)
		require.NoError(t, chromedp.Do(tab, chromedp.WaitVisible(chromedp.CSS(`a[href="/dashboard/queues/digicert"]`))))
		require.Eventually(t, func() bool { return manifestStatus.Load() == http.StatusOK }, 5*time.Second, 20*time.Millisecond,
			"manifest.json must load with the page's credentials (got %d)", manifestStatus.Load())
	})

	t.Run("ArchivedViewMasked", func(t *testing.T) {
		resp, err := chromedp.Run(tab, chromedp.NavigateResponse(archivedURL))
		require.NoError(t, err)
		require.Equal(t, int64(http.StatusOK), resp.Status)
		require.NoError(t, chromedp.Do(tab, chromedp.WaitVisible(chromedp.JSPath(row))))
		// The error and payload cells render with the row; wait for the
		// masked address in case the payload cell is filled a frame later.
		_, err = chromedp.Run(tab, chromedp.Poll[bool](`document.body.innerText.includes("`+approverMasked+`")`))
		require.NoError(t, err)

		text, err := chromedp.Run(tab, chromedp.Evaluate[string](row+`.innerText`))
		require.NoError(t, err)
		require.Contains(t, text, digicertErr)
		require.Contains(t, text, approverMasked)
		html, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
		require.NoError(t, err)
		require.NotContains(t, html, approver, "the full address must appear nowhere in the page")

		png, err := chromedp.Run(tab, chromedp.CaptureScreenshot())
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(shot, png, 0o644))
		t.Logf("screenshot of the archived view: %s", shot)
	})

	t.Run("RunMovesToPending", func(t *testing.T) {
		// The Run button exists only while the pointer is over the row.
		xy, err := chromedp.Run(tab, chromedp.Evaluate[[]float64](`(() => {
			const c = `+row+`.lastElementChild.getBoundingClientRect();
			return [c.x + c.width / 2, c.y + c.height / 2];
		})()`))
		require.NoError(t, err)
		require.Len(t, xy, 2)
		require.NoError(t, chromedp.Do(tab,
			chromedp.MouseEvent(chromedp.MouseMoved, xy[0], xy[1]),
			chromedp.WaitVisible(chromedp.CSS(`button[title="Run"]`)),
			chromedp.Click(chromedp.CSS(`button[title="Run"]`)),
		))
		_, err = chromedp.Run(tab, chromedp.Poll[bool](`document.body.innerText.includes("Archived task is now pending")`))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			info, err := insp.GetTaskInfo(tasks.QueueDigiCert, s.DigiCertDead)
			return err == nil && info.State == asynq.TaskStatePending
		}, 5*time.Second, 50*time.Millisecond, "the task must be pending after Run")
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}
