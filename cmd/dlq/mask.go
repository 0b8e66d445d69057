package main

import (
	"bytes"
	"encoding/json"
	"io"

	"github.com/certmail/certmail/internal/redact"
)

// maskJSON writes the JSON document b indented, with email addresses
// masked in every string (redact.JSON): payload, reference, last error and
// attempt fields alike, however an address is spelled or escaped. Records
// keep the real addresses (replay needs the payload); only output is masked.
func maskJSON(w io.Writer, b []byte) error {
	var out bytes.Buffer
	if err := json.Indent(&out, redact.JSON(b), "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err := out.WriteTo(w)
	return err
}
