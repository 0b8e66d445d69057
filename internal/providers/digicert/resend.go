package digicert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/httpx"
)

// ResendEmailsRequest is the body of the resend-emails call. Both fields are
// optional; an empty request is sent as {} and, by DigiCert's analogy with
// the domain-level endpoint, resends to all eligible recipients.
type ResendEmailsRequest struct {
	// DomainApprovalEmails lists the recipients; every entry needs a
	// non-empty Domain and Email, and pairs must be unique.
	DomainApprovalEmails []DomainApprovalEmail `json:"domain_approval_emails,omitempty"`
	// Locale is the email language, e.g. "en"; empty means the account
	// default. It is passed through unchecked.
	Locale string `json:"locale,omitempty"`
}

// DomainApprovalEmail names the address that gets a domain's DCV email.
type DomainApprovalEmail struct {
	Domain string `json:"domain"`
	Email  string `json:"email"`
	// EmailDomain is a legacy WHOIS hint without effect since WHOIS-based
	// DCV was retired; it is only passed through.
	EmailDomain string `json:"email_domain,omitempty"`
}

// Response describes a successful reply.
type Response struct {
	// StatusCode is the HTTP status, 204 normally.
	StatusCode int
	// Header is the reply's header.
	Header http.Header
}

// ResendEmails asks DigiCert to resend the DCV emails of a DV order. It
// makes exactly one HTTP request and does not retry. On failure the error
// is an *Error; the *Response is non-nil whenever a reply was read.
//
// DigiCert API docs: https://dev.digicert.com/en/certcentral-apis/services-api/orders/dv-ssl--resend-emails.html
func (c *Client) ResendEmails(ctx context.Context, orderID string, body ResendEmailsRequest) (*Response, error) {
	if err := validate(orderID, body); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, invalid("encoding body: %v", err)
	}
	u := *c.baseURL
	const suffix = "/resend-emails"
	u.Path = c.baseURL.Path + "order/certificate/" + orderID + suffix
	u.RawPath = c.baseURL.EscapedPath() + "order/certificate/" + url.PathEscape(orderID) + suffix
	return c.do(ctx, http.MethodPut, &u, payload)
}

// Resend implements providers.Resender with ResendEmails. req.Action must be
// empty or providers.ActionResendCertEmail.
//
// DigiCert API docs: https://dev.digicert.com/en/certcentral-apis/services-api/orders/dv-ssl--resend-emails.html
func (c *Client) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	if req.Action != "" && req.Action != providers.ActionResendCertEmail {
		return providers.Result{}, invalid("action %q is not supported by DigiCert", req.Action)
	}
	body := ResendEmailsRequest{Locale: req.Locale}
	for _, ae := range req.ApprovalEmails {
		body.DomainApprovalEmails = append(body.DomainApprovalEmails, DomainApprovalEmail{Domain: ae.Domain, Email: ae.Email})
	}
	resp, err := c.ResendEmails(ctx, req.OrderID, body)
	if err != nil {
		return providers.Result{}, err
	}
	return providers.Result{Provider: providers.DigiCert, StatusCode: resp.StatusCode}, nil
}

func invalid(format string, args ...any) *Error {
	return &Error{
		Class:   providers.Permanent,
		NotSent: true,
		Err:     fmt.Errorf("%w: %s", ErrInvalidRequest, fmt.Sprintf(format, args...)),
	}
}

func validate(orderID string, body ResendEmailsRequest) error {
	switch orderID {
	case "":
		return invalid("order ID is empty")
	case ".", "..":
		return invalid("order ID %q is not valid", orderID)
	}
	type pair struct{ domain, email string }
	seen := make(map[pair]bool, len(body.DomainApprovalEmails))
	for i, ae := range body.DomainApprovalEmails {
		if ae.Domain == "" {
			return invalid("domain_approval_emails[%d].domain is empty", i)
		}
		if ae.Email == "" {
			return invalid("domain_approval_emails[%d].email is empty", i)
		}
		p := pair{ae.Domain, ae.Email}
		if seen[p] {
			return invalid("domain_approval_emails[%d] repeats domain %q and email %q", i, ae.Domain, ae.Email)
		}
		seen[p] = true
	}
	return nil
}

// do sends one request through the shared call layer and turns the reply
// into a *Response or an *Error via checkResponse.
func (c *Client) do(ctx context.Context, method string, u *url.URL, payload []byte) (*Response, error) {
	h := http.Header{}
	h.Set("X-DC-DEVKEY", c.apiKey.Reveal())
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set("User-Agent", c.userAgent)
	rep, err := c.call.Do(ctx, method, u.String(), h, payload)
	if err != nil {
		var he *httpx.Error
		if !errors.As(err, &he) {
			return nil, &Error{Class: providers.Transient, Err: err}
		}
		return nil, transportError(he, c.timeout)
	}
	return c.checkResponse(rep)
}

// checkResponse returns a *Response for a 2xx reply, otherwise a classified
// *Error with every decoded error entry.
func (c *Client) checkResponse(rep *httpx.Reply) (*Response, error) {
	out := &Response{StatusCode: rep.StatusCode, Header: rep.Header}
	status := rep.StatusCode
	if rep.TooLarge {
		class := providers.Permanent
		if status >= 500 {
			class = providers.Transient
		}
		return out, &Error{
			StatusCode: status,
			Class:      class,
			Err:        fmt.Errorf("response body exceeds %d bytes (1 MiB)", httpx.MaxBodySize),
		}
	}
	if status >= 200 && status < 300 {
		// The status decides; the body of a 2xx is never decoded.
		return out, nil
	}
	body := rep.Body
	e := &Error{StatusCode: status}
	if len(body) > 0 {
		e.Body = body
	}
	e.Errors, _ = decodeErrors(body)
	e.Class = classify(status, e.Errors)
	switch {
	case rep.ReadErr != nil:
		e.Err = fmt.Errorf("reading body: %w", rep.ReadErr.Err)
		if cerr := rep.ReadErr.Canceled; cerr != nil && !errors.Is(rep.ReadErr.Err, cerr) {
			e.Err = fmt.Errorf("%w: %w", cerr, e.Err)
		}
	case status >= 300 && status < 400:
		if loc := rep.Header.Get("Location"); loc != "" {
			e.Err = fmt.Errorf("redirect to %q not followed", loc)
		} else {
			e.Err = fmt.Errorf("redirect not followed")
		}
	}
	if e.Class == providers.RateLimited {
		if d, ok := rep.RetryAfter(); ok {
			e.RetryAfter = d
		} else {
			e.RetryAfter = c.rateLimitWait
		}
	}
	return out, e
}
