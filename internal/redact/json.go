package redact

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// maxDepth bounds the nesting JSON walks; deeper documents are masked as
// text instead.
const maxDepth = 512

// JSON masks email addresses in every string of the JSON document b, object
// keys included, and returns it re-encoded (compact, key order kept, '<', '>'
// and '&' not escaped). Decoding first is what catches addresses whose at
// sign or letters are JSON escapes in b. Input that is not one valid JSON
// value is masked as text (Emails).
func JSON(b []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	w := &jsonWriter{}
	w.enc = json.NewEncoder(&w.scratch)
	w.enc.SetEscapeHTML(false)
	if err := w.value(dec, 0); err != nil {
		return []byte(Emails(string(b)))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return []byte(Emails(string(b)))
	}
	return w.out.Bytes()
}

type jsonWriter struct {
	out     bytes.Buffer
	scratch bytes.Buffer
	enc     *json.Encoder
}

var errJSON = errors.New("redact: unexpected JSON token")

func (w *jsonWriter) value(dec *json.Decoder, depth int) error {
	if depth > maxDepth {
		return errJSON
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			w.out.WriteByte('{')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					w.out.WriteByte(',')
				}
				k, err := dec.Token()
				if err != nil {
					return err
				}
				ks, ok := k.(string)
				if !ok {
					return errJSON
				}
				w.str(ks)
				w.out.WriteByte(':')
				if err := w.value(dec, depth+1); err != nil {
					return err
				}
			}
			if _, err := dec.Token(); err != nil {
				return err
			}
			w.out.WriteByte('}')
		case '[':
			w.out.WriteByte('[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					w.out.WriteByte(',')
				}
				if err := w.value(dec, depth+1); err != nil {
					return err
				}
			}
			if _, err := dec.Token(); err != nil {
				return err
			}
			w.out.WriteByte(']')
		default:
			return errJSON
		}
	case string:
		w.str(v)
	case json.Number:
		w.out.WriteString(v.String())
	case bool:
		if v {
			w.out.WriteString("true")
		} else {
			w.out.WriteString("false")
		}
	case nil:
		w.out.WriteString("null")
	default:
		return errJSON
	}
	return nil
}

func (w *jsonWriter) str(s string) {
	w.scratch.Reset()
	_ = w.enc.Encode(Emails(s)) // a string always encodes
	w.out.Write(bytes.TrimSuffix(w.scratch.Bytes(), []byte("\n")))
}
