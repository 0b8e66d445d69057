package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/httpx"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
)

// Defaults: loopback ports clear of the worker's 8080 and Redis's 6379.
const (
	defOpenSRSAddr  = "127.0.0.1:18081"
	defDigiCertAddr = "127.0.0.1:18082"
	defAdminAddr    = "127.0.0.1:18083"
)

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

type config struct {
	opensrsAddr, digicertAddr, adminAddr string
	opensrsUser, opensrsKey, digicertKey string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(ctx, args[1:], stderr, getenv)
	}
	cfg, err := parseConfig(args, stderr, getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "simulators:", err)
		var u usageError
		if errors.As(err, &u) {
			return 2
		}
		return 1
	}
	if err := serve(ctx, cfg, stdout); err != nil {
		fmt.Fprintln(stderr, "simulators:", err)
		return 1
	}
	return 0
}

func env(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

func parseConfig(args []string, stderr io.Writer, getenv func(string) string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("simulators", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.opensrsAddr, "opensrs-addr", env(getenv, "SIM_OPENSRS_ADDR", defOpenSRSAddr), "OpenSRS simulator address, loopback (env SIM_OPENSRS_ADDR)")
	fs.StringVar(&c.digicertAddr, "digicert-addr", env(getenv, "SIM_DIGICERT_ADDR", defDigiCertAddr), "DigiCert simulator address, loopback (env SIM_DIGICERT_ADDR)")
	fs.StringVar(&c.adminAddr, "admin-addr", env(getenv, "SIM_ADMIN_ADDR", defAdminAddr), "/healthz and /requests address, loopback (env SIM_ADMIN_ADDR)")
	fs.StringVar(&c.opensrsUser, "opensrs-username", getenv("OPENSRS_USERNAME"), "reseller username the OpenSRS simulator accepts (env OPENSRS_USERNAME)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	for _, a := range []struct{ name, v string }{{"--opensrs-addr", c.opensrsAddr}, {"--digicert-addr", c.digicertAddr}, {"--admin-addr", c.adminAddr}} {
		h, _, err := net.SplitHostPort(a.v)
		if err != nil || !httpx.IsLoopback(h) {
			return nil, usageError{fmt.Sprintf("%s: must be a loopback host:port (the worker accepts plain http only for loopback), got %q", a.name, a.v)}
		}
	}
	var err error
	if c.opensrsKey, err = secret(getenv, "OPENSRS_API_KEY"); err != nil {
		return nil, err
	}
	if c.digicertKey, err = secret(getenv, "DIGICERT_API_KEY"); err != nil {
		return nil, err
	}
	if c.opensrsKey != "" && c.opensrsUser == "" {
		return nil, usageError{"OPENSRS_USERNAME (--opensrs-username): required with OPENSRS_API_KEY"}
	}
	if c.opensrsKey == "" && c.digicertKey == "" {
		return nil, usageError{"no simulator configured: set OPENSRS_USERNAME and OPENSRS_API_KEY (or OPENSRS_API_KEY_FILE), and/or DIGICERT_API_KEY (or DIGICERT_API_KEY_FILE)"}
	}
	return c, nil
}

// secret reads NAME, or the file named by NAME_FILE (trailing newline cut),
// as the worker does. Messages never quote the value.
func secret(getenv func(string) string, name string) (string, error) {
	v, f := getenv(name), getenv(name+"_FILE")
	switch {
	case v != "" && f != "":
		return "", usageError{fmt.Sprintf("%s and %s_FILE: set only one", name, name)}
	case f != "":
		b, err := os.ReadFile(f)
		if err != nil {
			return "", usageError{fmt.Sprintf("%s_FILE: cannot read %s: %v", name, f, errors.Unwrap(err))}
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return v, nil
}

// opensrsRecord and digicertRecord are what /requests shows of a request.
type opensrsRecord struct {
	Time    time.Time `json:"time"`
	Action  string    `json:"action"`
	OrderID string    `json:"order_id"`
	Status  int       `json:"status"`
	Success bool      `json:"success"`
	Code    int       `json:"code"`
}

type digicertRecord struct {
	Time    time.Time `json:"time"`
	Method  string    `json:"method"`
	OrderID string    `json:"order_id"`
	Status  int       `json:"status"`
}

type requestsReply struct {
	OpenSRS  []opensrsRecord  `json:"opensrs"`
	DigiCert []digicertRecord `json:"digicert"`
}

func serve(ctx context.Context, c *config, stdout io.Writer) error {
	var lc net.ListenConfig
	listen := func(addr string) (net.Listener, error) { return lc.Listen(ctx, "tcp", addr) }
	var (
		osrs *opensrstest.Server
		dc   *digicerttest.Server
	)
	if c.opensrsKey != "" {
		l, err := listen(c.opensrsAddr)
		if err != nil {
			return err
		}
		osrs = opensrstest.NewServerOn(l, c.opensrsUser, c.opensrsKey)
		defer osrs.Close()
		osrs.SetBehavior("1002", opensrstest.Behavior{TransientFailures: 2})
		osrs.SetBehavior("1003", opensrstest.Behavior{ErrorCode: 480, ErrorText: "Order not found"})
		fmt.Fprintf(stdout, "opensrs simulator: OPENSRS_URL=%s\n", osrs.URL())
	}
	if c.digicertKey != "" {
		l, err := listen(c.digicertAddr)
		if err != nil {
			return err
		}
		dc = digicerttest.NewServerOn(l, c.digicertKey)
		defer dc.Close()
		dc.SetBehavior("2002", digicerttest.Behavior{RateLimited: 1, RetryAfter: 5 * time.Second})
		dc.SetBehavior("2003", digicerttest.Behavior{ErrorStatus: 404, ErrorCode: "not_found|order", ErrorMessage: "Order not found"})
		fmt.Fprintf(stdout, "digicert simulator: DIGICERT_URL=%s\n", dc.URL())
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /requests", func(w http.ResponseWriter, _ *http.Request) {
		rep := requestsReply{OpenSRS: []opensrsRecord{}, DigiCert: []digicertRecord{}}
		if osrs != nil {
			for _, r := range osrs.Requests() {
				rep.OpenSRS = append(rep.OpenSRS, opensrsRecord{Time: r.Time, Action: r.Action, OrderID: r.OrderID,
					Status: r.Outcome.StatusCode, Success: r.Outcome.Success, Code: r.Outcome.Code})
			}
		}
		if dc != nil {
			for _, r := range dc.Requests() {
				rep.DigiCert = append(rep.DigiCert, digicertRecord{Time: r.Time, Method: r.Method, OrderID: r.OrderID, Status: r.Status})
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
	al, err := listen(c.adminAddr)
	if err != nil {
		return err
	}
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "admin: http://%s/healthz http://%s/requests\n", al.Addr(), al.Addr())
	errc := make(chan error, 1)
	go func() { errc <- admin.Serve(al) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return admin.Shutdown(sctx)
}

// healthcheck GETs the admin /healthz (address from SIM_ADMIN_ADDR, or the
// argument) and exits 0 on 200.
func healthcheck(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) int {
	addr := env(getenv, "SIM_ADMIN_ADDR", defAdminAddr)
	switch len(args) {
	case 0:
	case 1:
		addr = args[0]
	default:
		fmt.Fprintln(stderr, "simulators: healthcheck takes at most one argument, the admin host:port")
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		fmt.Fprintln(stderr, "simulators: healthcheck: bad address", addr)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "simulators: healthcheck:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "simulators: healthcheck: status", resp.StatusCode)
		return 1
	}
	return 0
}
