// Package providers is the small, stable contract between the task handlers
// and the certificate-authority clients: the provider-neutral request and
// result, the Resender interface the handlers depend on, and the error
// classification that decides whether a failed resend is retried.
//
// The concrete clients live in the opensrs and digicert subpackages; they
// import this package, never the other way round, so the handlers can be
// tested with a fake Resender and the clients can change freely.
package providers

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Name identifies a provider. The values double as asynq queue names and as
// the "provider" field in logs, outcomes and metrics, so they never change.
type Name string

// The providers certmail talks to.
const (
	OpenSRS  Name = "opensrs"
	DigiCert Name = "digicert"
)

// Action is the provider operation a Request asks for.
type Action string

// Actions. The zero value means ActionResendCertEmail for OpenSRS and the
// order-level resend for DigiCert.
const (
	// ActionResendCertEmail resends the certificate (fulfilment) email of a
	// completed order (OpenSRS resend_cert_email, DigiCert resend-emails).
	ActionResendCertEmail Action = "resend_cert_email"
	// ActionResendApproveEmail resends the DCV approver email of an order that
	// still awaits approval (OpenSRS resend_approve_email).
	ActionResendApproveEmail Action = "resend_approve_email"
)

// ApprovalEmail names the address DigiCert should send a domain's DCV email to.
type ApprovalEmail struct {
	Domain string `json:"domain"`
	Email  string `json:"email"`
}

// Request is one resend, already validated by the task layer.
type Request struct {
	// OrderID is the provider's order number, 1–20 ASCII digits.
	OrderID string
	// Action selects the operation; empty means the provider's default.
	Action Action
	// ApprovalEmails and Locale are DigiCert-only and optional.
	ApprovalEmails []ApprovalEmail
	Locale         string
}

// Result describes a successful resend in the provider's own words.
type Result struct {
	Provider   Name   `json:"provider"`
	StatusCode int    `json:"http_status"`
	Code       string `json:"provider_code,omitempty"`
	Message    string `json:"provider_message,omitempty"`
}

// Resender sends one resend request to one provider. Implementations make
// exactly one HTTP request per call and never retry on their own: retries are
// the queue's decision, because every delivered request sends a real email.
type Resender interface {
	Resend(ctx context.Context, req Request) (Result, error)
}

// Class says what a failed (or successful) call means for the task.
type Class int

// Classes, from best to worst. The zero value is Transient so that an error
// nobody classified is retried rather than dropped.
const (
	// Transient: retry later through the queue (timeouts, 5xx, resets).
	Transient Class = iota
	// Success: the provider accepted the request.
	Success
	// RateLimited: the provider refused the request because of volume; it
	// was not processed, retry after the hint without spending the budget.
	RateLimited
	// Permanent: the request can never succeed as written (unknown order,
	// validation error); dead-letter it.
	Permanent
	// Configuration: our side is misconfigured (credentials, IP allow list,
	// base URL, TLS); dead-letter it and alert, replay once fixed.
	Configuration
)

// String returns the class as used in logs, outcomes and error messages.
func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Success:
		return "success"
	case RateLimited:
		return "rate_limited"
	case Permanent:
		return "permanent"
	case Configuration:
		return "configuration"
	default:
		return fmt.Sprintf("class(%d)", int(c))
	}
}

// Detail is the provider-neutral description of a failed call. Provider
// errors expose it so that the task layer can record outcomes and decide on
// retries without knowing provider types.
type Detail struct {
	Provider Name
	Class    Class
	// StatusCode is the HTTP status, 0 when no response was read.
	StatusCode int
	// Code and Message are the provider's own, several joined with "; ".
	Code    string
	Message string
	// RetryAfter is the provider's wait hint for RateLimited, 0 if none.
	RetryAfter time.Duration
	// WaitsOnReturn is set by a local guard (our own rate limiter) that
	// knows RetryAfter exactly and, when the task comes back, sleeps in
	// place up to this long for the rest of it. The queue may then bring
	// the task back early instead of late (see tasks.RetryPolicy.RetryDelay).
	// A provider's own hint leaves it 0: coming back early to a provider
	// would only earn another 429.
	WaitsOnReturn time.Duration
	// NotSent is true only when the request provably never reached the
	// provider: no connection was ever obtained (DNS failure, connection
	// refused, connect timeout, TLS failure) or it was refused before
	// sending. A write that failed part-way counts as sent. This is the one
	// case where retrying inside the same attempt cannot duplicate an email;
	// both clients take the answer from httpx.Error.NotSent.
	NotSent bool
}

// DetailedError is implemented by every provider error type.
type DetailedError interface {
	error
	Detail() Detail
}

// Describe returns the Detail of err. Errors that carry none are described as
// Transient with the error text as message, and cancellations as Transient
// too: the task goes back to the queue and nothing is lost.
func Describe(err error) Detail {
	if err == nil {
		return Detail{Class: Success}
	}
	var de DetailedError
	if errors.As(err, &de) {
		return de.Detail()
	}
	return Detail{Class: Transient, Message: err.Error()}
}

// Classify returns the class of err; nil is Success.
func Classify(err error) Class { return Describe(err).Class }
