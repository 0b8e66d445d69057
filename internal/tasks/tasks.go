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

// Payload is implemented by every task payload. Each task type has its own
// payload struct whose Type returns the type's constant, so the Go type of a
// payload is its task type: a zero value, a literal or a decoded payload
// all name the same type (river's JobArgs.Kind is the model).
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
	// From is the producer that enqueued the task: the HTTP API's token
	// name, "" for the CLIs and for tasks enqueued before it existed.
	From() string
	// withProducer returns a copy of the payload with its producer set.
	withProducer(name string) Payload
}

// OpenSRSOrder holds the fields both OpenSRS task types carry. It is not a
// payload: the struct that embeds it decides the task type.
type OpenSRSOrder struct {
	OrderID   string `json:"order_id"`
	Reference string `json:"reference,omitempty"`
	// Producer is set by the enqueuer from Options.Producer, never by the
	// request (DecodeLine rejects it); absent in older payloads.
	Producer string `json:"producer,omitempty"`
}

// Provider implements Payload.
func (o *OpenSRSOrder) Provider() providers.Name { return providers.OpenSRS }

// Validate implements Payload.
func (o *OpenSRSOrder) Validate() error {
	if err := validateOrderID(o.OrderID); err != nil {
		return err
	}
	if err := validateReference(o.Reference); err != nil {
		return err
	}
	return validateProducer(o.Producer)
}

// Order implements Payload.
func (o *OpenSRSOrder) Order() string { return o.OrderID }

// Ref implements Payload.
func (o *OpenSRSOrder) Ref() string { return o.Reference }

// From implements Payload.
func (o *OpenSRSOrder) From() string { return o.Producer }

// OpenSRSCertEmail is the payload of opensrs:resend_cert_email.
type OpenSRSCertEmail struct{ OpenSRSOrder }

// Type implements Payload.
func (OpenSRSCertEmail) Type() string { return TypeOpenSRSResendCertEmail }

func (p *OpenSRSCertEmail) withProducer(name string) Payload {
	c := *p
	c.Producer = name
	return &c
}

// Request implements Payload.
func (p *OpenSRSCertEmail) Request() providers.Request {
	return providers.Request{OrderID: p.OrderID, Action: providers.ActionResendCertEmail}
}

// OpenSRSApproveEmail is the payload of opensrs:resend_approve_email.
type OpenSRSApproveEmail struct{ OpenSRSOrder }

// Type implements Payload.
func (OpenSRSApproveEmail) Type() string { return TypeOpenSRSResendApproveEmail }

func (p *OpenSRSApproveEmail) withProducer(name string) Payload {
	c := *p
	c.Producer = name
	return &c
}

// Request implements Payload.
func (p *OpenSRSApproveEmail) Request() providers.Request {
	return providers.Request{OrderID: p.OrderID, Action: providers.ActionResendApproveEmail}
}

// NewOpenSRSPayload returns the payload of an opensrs:resend_cert_email task
// (or, with approve set, of opensrs:resend_approve_email).
func NewOpenSRSPayload(orderID, reference string, approve bool) Payload {
	o := OpenSRSOrder{OrderID: orderID, Reference: reference}
	if approve {
		return &OpenSRSApproveEmail{o}
	}
	return &OpenSRSCertEmail{o}
}

// DigiCertPayload is the payload of digicert:resend_emails.
type DigiCertPayload struct {
	OrderID              string                    `json:"order_id"`
	DomainApprovalEmails []providers.ApprovalEmail `json:"domain_approval_emails,omitempty"`
	Locale               string                    `json:"locale,omitempty"`
	Reference            string                    `json:"reference,omitempty"`
	// Producer: as OpenSRSOrder.Producer.
	Producer string `json:"producer,omitempty"`
}

// Type implements Payload.
func (DigiCertPayload) Type() string { return TypeDigiCertResendEmails }

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
	if err := validateReference(p.Reference); err != nil {
		return err
	}
	return validateProducer(p.Producer)
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

// From implements Payload.
func (p *DigiCertPayload) From() string { return p.Producer }

func (p *DigiCertPayload) withProducer(name string) Payload {
	c := *p
	c.Producer = name
	return &c
}

// Decode parses and validates the payload of a task of the given type. An
// unknown type or an invalid payload is an error the handler treats as
// permanent: retrying cannot fix it.
func Decode(taskType string, payload []byte) (Payload, error) {
	k, ok := KindOf(taskType)
	if !ok {
		return nil, fmt.Errorf("unknown task type %q", taskType)
	}
	if err := validatePayloadSize(payload); err != nil {
		return nil, err
	}
	p := k.New()
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
	_, ok := KindOf(taskType)
	return ok
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
