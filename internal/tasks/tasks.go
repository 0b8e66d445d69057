package tasks

import (
	"encoding/json"
	"fmt"

	"github.com/certmail/certmail/internal/providers"
)

// Task types.
const (
	TypeOpenSRSResendCertEmail    = "opensrs:resend_cert_email"
	TypeOpenSRSResendApproveEmail = "opensrs:resend_approve_email"
	TypeDigiCertResendEmails      = "digicert:resend_emails"
)

// Queues are named after the providers so that one provider's outage can be
// paused without touching the other.
const (
	QueueOpenSRS  = string(providers.OpenSRS)
	QueueDigiCert = string(providers.DigiCert)
)

// Queues lists every queue certmail uses.
var Queues = []string{QueueOpenSRS, QueueDigiCert}

// Payload is implemented by every task payload.
type Payload interface {
	// Type is the task type the payload belongs to.
	Type() string
	// Provider is the provider that serves the task, also its queue name.
	Provider() providers.Name
	// Validate returns a *FieldError naming the first invalid field.
	Validate() error
	// Request is the provider request the handler sends.
	Request() providers.Request
	// Order and Ref identify the request in logs and outcomes.
	Order() string
	Ref() string
}

// OpenSRSPayload is the payload of both OpenSRS task types.
type OpenSRSPayload struct {
	OrderID   string `json:"order_id"`
	Reference string `json:"reference,omitempty"`

	// action is set by Decode from the task type; it is not on the wire.
	action providers.Action
}

// NewOpenSRSPayload returns the payload of an opensrs:resend_cert_email task
// (or, with approve set, of opensrs:resend_approve_email).
func NewOpenSRSPayload(orderID, reference string, approve bool) *OpenSRSPayload {
	p := &OpenSRSPayload{OrderID: orderID, Reference: reference, action: providers.ActionResendCertEmail}
	if approve {
		p.action = providers.ActionResendApproveEmail
	}
	return p
}

// Type implements Payload.
func (p *OpenSRSPayload) Type() string {
	if p.action == providers.ActionResendApproveEmail {
		return TypeOpenSRSResendApproveEmail
	}
	return TypeOpenSRSResendCertEmail
}

// Provider implements Payload.
func (p *OpenSRSPayload) Provider() providers.Name { return providers.OpenSRS }

// Validate implements Payload.
func (p *OpenSRSPayload) Validate() error {
	if err := validateOrderID(p.OrderID); err != nil {
		return err
	}
	return validateReference(p.Reference)
}

// Request implements Payload.
func (p *OpenSRSPayload) Request() providers.Request {
	a := p.action
	if a == "" {
		a = providers.ActionResendCertEmail
	}
	return providers.Request{OrderID: p.OrderID, Action: a}
}

// Order implements Payload.
func (p *OpenSRSPayload) Order() string { return p.OrderID }

// Ref implements Payload.
func (p *OpenSRSPayload) Ref() string { return p.Reference }

// DigiCertPayload is the payload of digicert:resend_emails.
type DigiCertPayload struct {
	OrderID              string                    `json:"order_id"`
	DomainApprovalEmails []providers.ApprovalEmail `json:"domain_approval_emails,omitempty"`
	Locale               string                    `json:"locale,omitempty"`
	Reference            string                    `json:"reference,omitempty"`
}

// Type implements Payload.
func (p *DigiCertPayload) Type() string { return TypeDigiCertResendEmails }

// Provider implements Payload.
func (p *DigiCertPayload) Provider() providers.Name { return providers.DigiCert }

// Validate implements Payload.
func (p *DigiCertPayload) Validate() error {
	if err := validateOrderID(p.OrderID); err != nil {
		return err
	}
	if err := validateApprovalCount(len(p.DomainApprovalEmails)); err != nil {
		return err
	}
	seen := make(map[providers.ApprovalEmail]bool, len(p.DomainApprovalEmails))
	for i, e := range p.DomainApprovalEmails {
		field := fmt.Sprintf("domain_approval_emails[%d]", i)
		if err := validateDomain(field+".domain", e.Domain); err != nil {
			return err
		}
		if err := validateEmail(field+".email", e.Email); err != nil {
			return err
		}
		if seen[e] {
			return fieldErr(field, "duplicates an earlier entry")
		}
		seen[e] = true
	}
	if err := validateLocale(p.Locale); err != nil {
		return err
	}
	return validateReference(p.Reference)
}

// Request implements Payload.
func (p *DigiCertPayload) Request() providers.Request {
	return providers.Request{
		OrderID:        p.OrderID,
		Action:         providers.ActionResendCertEmail,
		ApprovalEmails: p.DomainApprovalEmails,
		Locale:         p.Locale,
	}
}

// Order implements Payload.
func (p *DigiCertPayload) Order() string { return p.OrderID }

// Ref implements Payload.
func (p *DigiCertPayload) Ref() string { return p.Reference }

// Decode parses and validates the payload of a task of the given type. An
// unknown type or an invalid payload is an error the handler treats as
// permanent: retrying cannot fix it.
func Decode(taskType string, payload []byte) (Payload, error) {
	var p Payload
	switch taskType {
	case TypeOpenSRSResendCertEmail:
		p = &OpenSRSPayload{action: providers.ActionResendCertEmail}
	case TypeOpenSRSResendApproveEmail:
		p = &OpenSRSPayload{action: providers.ActionResendApproveEmail}
	case TypeDigiCertResendEmails:
		p = &DigiCertPayload{}
	default:
		return nil, fmt.Errorf("unknown task type %q", taskType)
	}
	if err := validatePayloadSize(payload); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(payload, p); err != nil {
		return nil, fmt.Errorf("payload is not valid JSON for %s: %v", taskType, err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// Known reports whether taskType is a task type certmail serves.
func Known(taskType string) bool {
	switch taskType {
	case TypeOpenSRSResendCertEmail, TypeOpenSRSResendApproveEmail, TypeDigiCertResendEmails:
		return true
	}
	return false
}

// Meta extracts order_id and reference from a payload without validating it,
// for records of tasks whose payload is broken.
func Meta(payload []byte) (orderID, reference string) {
	var m struct {
		OrderID   any    `json:"order_id"`
		Reference string `json:"reference"`
	}
	_ = json.Unmarshal(payload, &m)
	if m.OrderID != nil {
		orderID = fmt.Sprint(m.OrderID)
	}
	return orderID, m.Reference
}
