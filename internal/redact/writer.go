package redact

import (
	"bytes"
	"io"
)

// Writer masks email addresses in what is written through it, one complete
// line at a time (an address never spans lines), so that output assembled
// from many writes cannot let one slip through between two of them. Flush
// writes a last line without its newline.
type Writer struct {
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer writing masked lines to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write buffers p and writes out every line it completes, masked. It
// reports len(p) written unless the underlying writer fails.
func (m *Writer) Write(p []byte) (int, error) {
	m.buf = append(m.buf, p...)
	i := bytes.LastIndexByte(m.buf, '\n')
	if i < 0 {
		return len(p), nil
	}
	if _, err := io.WriteString(m.w, Emails(string(m.buf[:i+1]))); err != nil {
		return 0, err
	}
	m.buf = append(m.buf[:0], m.buf[i+1:]...)
	return len(p), nil
}

// Flush writes what remains after the last newline, masked.
func (m *Writer) Flush() error {
	if len(m.buf) == 0 {
		return nil
	}
	_, err := io.WriteString(m.w, Emails(string(m.buf)))
	m.buf = m.buf[:0]
	return err
}
