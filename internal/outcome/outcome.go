// Package outcome records what happened to every resend attempt and keeps
// the durable dead-letter records that ops list and replay.
//
// asynq keeps a task's last error and, with Retention, its result; it does
// not keep a history of attempts, and its archive silently trims beyond
// 10,000 tasks or 90 days per queue. So each attempt is written here, in one
// pipelined round trip on the task's hot path:
//
//   - certmail:attempts:{task_id}  list of Attempt JSON, oldest first, expiring
//     with the retention window (kept forever while the task is dead);
//   - certmail:outcomes            a capped stream of every attempt, for ops tools;
//   - certmail:dead:{task_id}      the dead-letter record (no TTL) and
//     certmail:dead                its index, a sorted set scored by time of death;
//   - certmail:deadclaim:{task_id} an operator's claim on a dead letter while it
//     replays or deletes it (expires with ClaimDead's lease), and
//     certmail:tomb:{task_id}      what became of a dead letter ("replayed" or
//     "deleted"), kept TombstoneTTL so that no sweep brings it back;
//   - certmail:done:{task_id}      the idempotency mark set on success, and
//     certmail:inflight:{task_id}  the claim of the delivery calling the provider
//     now; both are checked (one script, one round trip) before a provider call
//     so that a redelivered or concurrently delivered task does not email twice.
//
// All keys share the prefix KeyPrefix, declared here and nowhere else. The
// dead-letter scripts also read two of asynq's keys (a queue's archive and a
// task hash); their names are built here too, from asynq's layout
// (internal/base/base.go in asynq v0.26), and only ever read.
package outcome

import (
	"bytes"
	"encoding/json"
	"time"
)

// KeyPrefix prefixes every Redis key certmail owns (asynq owns "asynq:").
const KeyPrefix = "certmail:"

// Keys. Functions rather than a format string scattered over the code.
const (
	streamKey    = KeyPrefix + "outcomes"
	deadIndexKey = KeyPrefix + "dead"
)

func attemptsKey(id string) string { return KeyPrefix + "attempts:" + id }
func deadKey(id string) string     { return KeyPrefix + "dead:" + id }
func doneKey(id string) string     { return KeyPrefix + "done:{" + id + "}" }

// inflightKey shares doneKey's hash tag so the claim script touches one
// cluster slot.
func inflightKey(id string) string { return KeyPrefix + "inflight:{" + id + "}" }

// deadClaimKey holds "op:token" of the operator replaying or deleting the
// dead letter now.
func deadClaimKey(id string) string { return KeyPrefix + "deadclaim:" + id }
func tombKey(id string) string      { return KeyPrefix + "tomb:" + id }

// asynq's keys, read by the dead-letter scripts and never written: the
// archive of a queue (a sorted set of task IDs) and a task's hash.
func asynqArchivedKey(queue string) string { return "asynq:{" + queue + "}:archived" }
func asynqTaskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// DedupKey is the key of the enqueue deduplication mark for a request hash.
func DedupKey(hash string) string { return KeyPrefix + "dedup:" + hash }

// Outcome is the result of one attempt, as written in logs and records.
type Outcome string

// Outcomes.
const (
	Succeeded   Outcome = "succeeded"
	Retrying    Outcome = "retrying"
	RateLimited Outcome = "rate_limited"
	Dead        Outcome = "dead"
)

// Attempt is the record of one handler run.
type Attempt struct {
	TaskID    string `json:"task_id"`
	Type      string `json:"type"`
	Queue     string `json:"queue"`
	Provider  string `json:"provider"`
	OrderID   string `json:"order_id,omitempty"`
	Reference string `json:"reference,omitempty"`
	// Attempt is asynq's retry count plus one: rate-limited bounces do not
	// spend the retry budget and so repeat the number.
	Attempt int     `json:"attempt"`
	Outcome Outcome `json:"outcome"`
	// Class is the provider-neutral class (providers.Class.String()).
	Class           string `json:"class"`
	ProviderCode    string `json:"provider_code,omitempty"`
	ProviderMessage string `json:"provider_message,omitempty"`
	HTTPStatus      int    `json:"http_status,omitempty"`
	Error           string `json:"error,omitempty"`
	// RetryInMS is the wait before the next attempt, when one is scheduled
	// by a rate limit hint.
	RetryInMS  int64     `json:"retry_in_ms,omitempty"`
	DurationMS float64   `json:"duration_ms"`
	At         time.Time `json:"at"`
	// Claim is the token of this delivery's in-flight claim, released when
	// the attempt is recorded. Not stored.
	Claim string `json:"-"`
}

// DeadLetter is the durable record of a task that ended dead.
type DeadLetter struct {
	ID        string  `json:"id"`
	Type      string  `json:"type"`
	Queue     string  `json:"queue"`
	Provider  string  `json:"provider"`
	OrderID   string  `json:"order_id"`
	Reference string  `json:"reference,omitempty"`
	Payload   Payload `json:"payload"`
	Retried   int     `json:"retried"`
	MaxRetry  int     `json:"max_retry"`
	// LastError is the final error in the provider's words plus our class.
	LastError    string    `json:"last_error"`
	LastFailedAt time.Time `json:"last_failed_at"`
	// Class is why it died: permanent, configuration, invalid_payload,
	// retries_exhausted, or unknown for tasks found in asynq's archive.
	Class string `json:"class"`
	// Source is "handler" when the worker recorded the death as it happened,
	// "reconciled" when it was found later in asynq's archive (crash path).
	Source string `json:"source"`
}

// Payload is a task payload kept verbatim. It marshals as the JSON object it
// normally is, and as a JSON string when the payload was not valid JSON (the
// bad task is still kept, byte for byte).
type Payload []byte

// MarshalJSON implements json.Marshaler. A payload that is a JSON object or
// array is emitted as that value (compacted: scripts read it as an object,
// as the dlq and status contracts promise); anything else, including broken
// JSON, is emitted as a string holding the bytes.
func (p Payload) MarshalJSON() ([]byte, error) {
	if t := bytes.TrimSpace(p); len(t) > 0 && (t[0] == '{' || t[0] == '[') && json.Valid(t) {
		var c bytes.Buffer
		if err := json.Compact(&c, t); err == nil {
			return c.Bytes(), nil
		}
	}
	return json.Marshal(string(p))
}

// UnmarshalJSON implements json.Unmarshaler; it reverses MarshalJSON.
func (p *Payload) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*p = Payload(s)
		return nil
	}
	*p = append((*p)[:0], b...)
	return nil
}
