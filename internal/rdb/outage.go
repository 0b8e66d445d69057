package rdb

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// outageAdmitScript decides whether a call may go to the provider. While
// the circuit is closed every call may. While it is open one call per
// probe interval may, as the probe: the first caller to find the probe
// lease lapsed (by Redis's clock, so workers' clocks do not matter) takes
// it, like a SET NX with PX, but kept in the circuit's hash so that the
// lease and the state change together in one script.
//
// KEYS[1] OutageKey, KEYS[2] OutageFailsKey. ARGV[1] the caller's token,
// ARGV[2] the probe interval in ms.
// Returns {admitted, probe, ms until the probe lease lapses, failures
// logged}.
var outageAdmitScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call("HMGET", KEYS[1], "open", "probe_until")
if not st[1] then
  return {1, 0, 0, redis.call("ZCARD", KEYS[2])}
end
local pu = tonumber(st[2]) or 0
if now >= pu then
  redis.call("HSET", KEYS[1], "probe_until", now + tonumber(ARGV[2]), "probe_token", ARGV[1])
  return {1, 1, 0, 0}
end
return {0, 0, pu - now, 0}
`)

// outageReportScript records how an admitted call ended and performs the
// transition it causes, so that exactly one worker sees each transition.
//
// KEYS as outageAdmitScript. ARGV[1] "ok", "fail" or "neutral"; ARGV[2]
// the probe token ("" when the call was no probe); ARGV[3] the threshold;
// ARGV[4] the window in ms; ARGV[5] the probe interval in ms; ARGV[6] the
// TTL of an open circuit in ms; ARGV[7] a unique member for the failure
// log.
// Returns {transition, ms the circuit has been open, ms until the next
// probe may start}; transitions are the OutageTransition values.
var outageReportScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call("HMGET", KEYS[1], "open", "probe_until", "probe_token")
local open = tonumber(st[1])
local pu = tonumber(st[2]) or now
local mine = ARGV[2] ~= "" and st[3] == ARGV[2]
local interval = tonumber(ARGV[5])
if ARGV[1] == "ok" then
  redis.call("DEL", KEYS[2])
  if open then
    redis.call("DEL", KEYS[1])
    return {2, now - open, 0}
  end
  return {0, 0, 0}
end
if not open then
  if ARGV[1] ~= "fail" then
    return {0, 0, 0}
  end
  local window = tonumber(ARGV[4])
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now - window)
  redis.call("ZADD", KEYS[2], now, ARGV[7])
  redis.call("PEXPIRE", KEYS[2], window)
  if redis.call("ZCARD", KEYS[2]) >= tonumber(ARGV[3]) then
    redis.call("DEL", KEYS[2])
    redis.call("HSET", KEYS[1], "open", now, "probe_until", now + interval, "probe_token", "")
    redis.call("PEXPIRE", KEYS[1], ARGV[6])
    return {1, 0, interval}
  end
  return {0, 0, 0}
end
if mine and ARGV[1] == "fail" then
  redis.call("HSET", KEYS[1], "probe_until", now + interval, "probe_token", "")
  redis.call("PEXPIRE", KEYS[1], ARGV[6])
  return {3, now - open, interval}
end
if mine then
  redis.call("HSET", KEYS[1], "probe_until", now, "probe_token", "")
  return {4, now - open, 0}
end
return {5, now - open, math.max(pu - now, 0)}
`)

// OutageAdmission is outageAdmitScript's answer.
type OutageAdmission struct {
	// Admitted: the call may go to the provider.
	Admitted bool
	// Probe: the circuit is open and this call is its probe.
	Probe bool
	// Wait is how long until the next probe may start, when not admitted.
	Wait time.Duration
	// Failures is the number of failures in the log (closed circuit only).
	Failures int64
}

// OutageAdmit asks whether a call to the credential credHash of provider
// may be sent now; token names the caller should it become the probe.
func (r *Client) OutageAdmit(ctx context.Context, provider, credHash, token string, probeEvery time.Duration) (OutageAdmission, error) {
	res, err := outageAdmitScript.Run(ctx, r.c, []string{OutageKey(provider, credHash), OutageFailsKey(provider, credHash)}, token, ms(probeEvery)).Int64Slice()
	if err != nil {
		return OutageAdmission{}, err
	}
	if len(res) != 4 {
		return OutageAdmission{}, errUnexpected(res)
	}
	return OutageAdmission{Admitted: res[0] == 1, Probe: res[1] == 1, Wait: time.Duration(res[2]) * time.Millisecond, Failures: res[3]}, nil
}

// OutageResult is how an admitted call ended, for OutageReport.
type OutageResult string

// Results of a call.
const (
	// OutageOK: the provider answered (a success, or a probe's answer that
	// shows the provider is up).
	OutageOK OutageResult = "ok"
	// OutageFail: the provider failed transiently (5xx, timeout, connection).
	OutageFail OutageResult = "fail"
	// OutageNeutral: the call says nothing of the provider (held back by a
	// local limit, cancelled); a probe gives its lease back.
	OutageNeutral OutageResult = "neutral"
)

// OutageTransition is what a report did to the circuit.
type OutageTransition int

// Transitions, as outageReportScript returns them.
const (
	OutageClosedNone   OutageTransition = iota // closed and still closed
	OutageOpened                               // this failure opened it
	OutageClosed                               // this success closed it
	OutageProbeFailed                          // this probe failed: still open
	OutageProbeDropped                         // this probe said nothing: lease given back
	OutageOpenNone                             // open, not this caller's probe
)

// OutageState is OutageReport's answer.
type OutageState struct {
	Transition OutageTransition
	// OpenFor is how long the circuit has been open (before closing).
	OpenFor time.Duration
	// UntilProbe is how long until the next probe may start (open only).
	UntilProbe time.Duration
}

// Open reports whether the circuit is open after the report.
func (s OutageState) Open() bool {
	switch s.Transition {
	case OutageOpened, OutageProbeFailed, OutageProbeDropped, OutageOpenNone:
		return true
	}
	return false
}

// OutageLimits are the circuit's settings, for OutageReport.
type OutageLimits struct {
	Threshold  int
	Window     time.Duration
	ProbeEvery time.Duration
	// TTL bounds an open circuit nobody probes (every worker gone): it is
	// renewed by each failed probe.
	TTL time.Duration
}

// OutageReport records res of a call admitted by OutageAdmit (probeToken
// is its token if it was the probe, else "") and returns the state it left.
// member must be unique per report (it names the failure in the log).
func (r *Client) OutageReport(ctx context.Context, provider, credHash string, res OutageResult, probeToken string, l OutageLimits, member string) (OutageState, error) {
	out, err := outageReportScript.Run(ctx, r.c, []string{OutageKey(provider, credHash), OutageFailsKey(provider, credHash)},
		string(res), probeToken, l.Threshold, ms(l.Window), ms(l.ProbeEvery), ms(l.TTL), member).Int64Slice()
	if err != nil {
		return OutageState{}, err
	}
	if len(out) != 3 {
		return OutageState{}, errUnexpected(out)
	}
	return OutageState{Transition: OutageTransition(out[0]), OpenFor: time.Duration(out[1]) * time.Millisecond,
		UntilProbe: time.Duration(out[2]) * time.Millisecond}, nil
}

// OutageOpen reports whether the circuit of credHash at provider is open
// (for metrics and tests).
func (r *Client) OutageOpen(ctx context.Context, provider, credHash string) (bool, error) {
	n, err := r.c.HExists(ctx, OutageKey(provider, credHash), "open").Result()
	return n, err
}
