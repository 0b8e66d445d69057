package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/tasks"
)

// Problem is an RFC 9457 problem detail. Field names the request field at
// fault (a JSON field, "body", or a header name), when there is one.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Field  string `json:"field,omitempty"`
}

// problemType is the type URI of the problems this API answers; the title
// says which (RFC 9457 §4.2.1: about:blank with the status's phrase).
const problemType = "about:blank"

func newProblem(status int, field, detail string) Problem {
	return Problem{Type: problemType, Title: http.StatusText(status), Status: status,
		Detail: redact.Emails(detail), Field: redact.Emails(field)}
}

func writeProblem(w http.ResponseWriter, p Problem) {
	b, _ := json.Marshal(p)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(p.Status)
	_, _ = w.Write(b)
}

// leadingField is "name: reason" as the tasks package writes it.
var (
	leadingField = regexp.MustCompile(`^([a-z_][a-z0-9_]*(?:\[[0-9]+\])?(?:\.[a-z_]+)?): `)
	unknownField = regexp.MustCompile(`unknown field "([^"]*)"`)
)

// fieldOf names the field an error from the tasks package is about: a
// *tasks.FieldError's field (option names with hyphens as the API spells
// them, max_retry), an unknown field, or the "name: " the message starts
// with; "body" otherwise.
func fieldOf(err error) string {
	var fe *tasks.FieldError
	if errors.As(err, &fe) {
		return strings.ReplaceAll(fe.Field, "-", "_")
	}
	msg := err.Error()
	if m := unknownField.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	if m := leadingField.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	return "body"
}

// detailOf is the error's message with option names as the API spells them.
func detailOf(err error) string {
	var fe *tasks.FieldError
	if errors.As(err, &fe) {
		return strings.ReplaceAll(fe.Field, "-", "_") + ": " + strings.ReplaceAll(fe.Reason, "--dedup-window", "the dedup window")
	}
	return err.Error()
}

// ItemError is the per-item error of a batch result.
type ItemError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

func itemError(err error) *ItemError {
	return &ItemError{Field: redact.Emails(fieldOf(err)), Detail: redact.Emails(detailOf(err))}
}
