// Package outcome records what happened to every resend attempt and keeps
// the durable dead-letter records that ops list and replay.
//
// asynq keeps a task's last error and, with Retention, its result; it does
// not keep a history of attempts, and its archive silently trims beyond
// 10,000 tasks or 90 days per queue. So each attempt is written here, in one
// pipelined round trip on the task's hot path: the task's attempt history,
// a capped stream of every attempt, the dead-letter record and its index
// when the attempt ended the task, and the success mark. Before a provider
// call, Claim checks the success mark and takes an in-flight claim (one
// script, one round trip) so that a redelivered or concurrently delivered
// task does not email twice. Operators replay or delete dead letters under
// a claim (ClaimDead, FinishDead) that leaves a tombstone, so that no sweep
// brings them back.
//
// This package keeps the types and their encoding; the keys, commands and
// scripts are the rdb package's, whose doc lists every key with its type
// and lifetime.
package outcome

import (
	"bytes"
	"encoding/json"
	"time"
)

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
	// Producer is who enqueued the task (the HTTP API's token name), from
	// the payload; absent for CLI tasks.
	Producer string `json:"producer,omitempty"`
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
