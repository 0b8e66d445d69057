package opensrs

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The documented OPS preamble (docs/opensrs.md §4).
const (
	xmlDecl    = "<?xml version='1.0' encoding='UTF-8' standalone='no' ?>"
	docType    = "<!DOCTYPE OPS_envelope SYSTEM 'ops.dtd'>"
	opsVersion = "0.9"
)

// item is one entry of an ordered dt_assoc.
type item struct {
	key string
	val any
}

// assoc is a dt_assoc whose items keep their order on the wire.
type assoc []item

// encodeRequest builds the OPS envelope of an XCP command. The top-level items
// go on their own lines and nested containers inline, which for
// resend_cert_email of order 1799 reproduces the signed test vector of
// docs/opensrs.md §3 byte for byte.
func encodeRequest(action, object string, attrs assoc) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(xmlDecl + "\n" + docType + "\n<OPS_envelope>\n")
	b.WriteString("<header><version>" + opsVersion + "</version></header>\n")
	b.WriteString("<body><data_block><dt_assoc>\n")
	top := assoc{
		{"protocol", "XCP"},
		{"action", action},
		{"object", object},
		{"attributes", attrs},
	}
	for _, it := range top {
		if err := writeItem(&b, it.key, it.val, 0); err != nil {
			return nil, err
		}
		b.WriteByte('\n')
	}
	b.WriteString("</dt_assoc></data_block></body>\n</OPS_envelope>")
	return b.Bytes(), nil
}

const maxEncodeDepth = 32

func writeItem(b *bytes.Buffer, key string, v any, depth int) error {
	b.WriteString(`<item key="`)
	escape(b, key)
	b.WriteString(`">`)
	if err := writeValue(b, v, depth); err != nil {
		return fmt.Errorf("item %q: %w", key, err)
	}
	b.WriteString("</item>")
	return nil
}

// writeValue writes a scalar as escaped text and a container as dt_assoc or
// dt_array. Supported: string, bool ("1"/"0"), int, int64, assoc,
// map[string]any and map[string]string (keys sorted), []any and []string.
func writeValue(b *bytes.Buffer, v any, depth int) error {
	if depth > maxEncodeDepth {
		return errors.New("nested too deeply")
	}
	switch v := v.(type) {
	case string:
		escape(b, v)
	case bool:
		if v {
			b.WriteByte('1')
		} else {
			b.WriteByte('0')
		}
	case int:
		b.WriteString(strconv.Itoa(v))
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case assoc:
		b.WriteString("<dt_assoc>")
		for _, it := range v {
			if err := writeItem(b, it.key, it.val, depth+1); err != nil {
				return err
			}
		}
		b.WriteString("</dt_assoc>")
	case map[string]any:
		b.WriteString("<dt_assoc>")
		for _, k := range slices.Sorted(maps.Keys(v)) {
			if err := writeItem(b, k, v[k], depth+1); err != nil {
				return err
			}
		}
		b.WriteString("</dt_assoc>")
	case map[string]string:
		b.WriteString("<dt_assoc>")
		for _, k := range slices.Sorted(maps.Keys(v)) {
			if err := writeItem(b, k, v[k], depth+1); err != nil {
				return err
			}
		}
		b.WriteString("</dt_assoc>")
	case []any:
		b.WriteString("<dt_array>")
		for i, e := range v {
			if err := writeItem(b, strconv.Itoa(i), e, depth+1); err != nil {
				return err
			}
		}
		b.WriteString("</dt_array>")
	case []string:
		b.WriteString("<dt_array>")
		for i, e := range v {
			if err := writeItem(b, strconv.Itoa(i), e, depth+1); err != nil {
				return err
			}
		}
		b.WriteString("</dt_array>")
	default:
		return fmt.Errorf("unsupported value type %T", v)
	}
	return nil
}

// escape writes s with & < > ' " (and control whitespace) escaped; invalid
// UTF-8 and characters XML cannot carry become U+FFFD.
func escape(b *bytes.Buffer, s string) {
	_ = xml.EscapeText(b, []byte(s)) // bytes.Buffer never fails
}

// Reply is a decoded OPS reply.
type Reply struct {
	// StatusCode is the HTTP status the reply came with.
	StatusCode int
	// Protocol, Action and Object as sent by OpenSRS, lower-cased
	// ("xcp", "reply", "trust_service").
	Protocol string
	Action   string
	Object   string
	// IsSuccess is true only when is_success is "1".
	IsSuccess bool
	// ResponseCode and ResponseText are the OPS response_code and
	// response_text.
	ResponseCode string
	ResponseText string
	// ErrorDetails holds the undocumented top-level error_details entries,
	// in key order, when present.
	ErrorDetails []string
	// Attributes is the reply's attributes dt_assoc: values are string,
	// map[string]any (dt_assoc) or []any (dt_array). Nil when absent.
	Attributes map[string]any
	// OrderID is attributes.order_id when it is a scalar.
	OrderID string
}

// Message returns response_text followed by the error_details entries,
// joined with "; ".
func (r *Reply) Message() string {
	parts := make([]string, 0, 1+len(r.ErrorDetails))
	if r.ResponseText != "" {
		parts = append(parts, r.ResponseText)
	}
	for _, d := range r.ErrorDetails {
		if d != "" {
			parts = append(parts, d)
		}
	}
	return strings.Join(parts, "; ")
}

// Decoder limits; a reply is at most 1 MiB anyway.
const maxDecodeDepth = 64

var errNotOPS = errors.New("not an OPS reply")

// decodeReply parses an OPS reply envelope. Keys and the action/object values
// are matched case-insensitively; dt_array items are placed by their key.
func decodeReply(data []byte) (*Reply, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	root, err := nextStart(d)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotOPS, err)
	}
	if !strings.EqualFold(root.Name.Local, "OPS_envelope") {
		return nil, fmt.Errorf("%w: root element <%s>", errNotOPS, root.Name.Local)
	}
	var block any
	found := false
	// Walk OPS_envelope → body → data_block; skip header and anything else.
	if err := walkEnvelope(d, &block, &found); err != nil {
		return nil, fmt.Errorf("%w: %w", errNotOPS, err)
	}
	if !found {
		return nil, fmt.Errorf("%w: no body/data_block", errNotOPS)
	}
	top, ok := block.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: data_block is not a dt_assoc", errNotOPS)
	}
	get := func(key string) (any, bool) {
		for k, v := range top {
			if strings.EqualFold(k, key) {
				return v, true
			}
		}
		return nil, false
	}
	str := func(key string) string {
		v, _ := get(key)
		s, _ := v.(string)
		return s
	}
	r := &Reply{
		Protocol:     strings.ToLower(str("protocol")),
		Action:       strings.ToLower(str("action")),
		Object:       strings.ToLower(str("object")),
		ResponseCode: str("response_code"),
		ResponseText: str("response_text"),
	}
	succ, ok := get("is_success")
	if !ok {
		return nil, fmt.Errorf("%w: no is_success", errNotOPS)
	}
	if s, _ := succ.(string); s == "1" {
		r.IsSuccess = true
	}
	if r.Action != "" && r.Action != "reply" {
		return nil, fmt.Errorf("%w: action %q", errNotOPS, r.Action)
	}
	if v, ok := get("attributes"); ok {
		if m, ok := v.(map[string]any); ok {
			r.Attributes = m
			for k, v := range m {
				if strings.EqualFold(k, "order_id") {
					r.OrderID, _ = v.(string)
				}
			}
		}
	}
	if v, ok := get("error_details"); ok {
		r.ErrorDetails = flatten(v, nil)
	}
	return r, nil
}

// flatten collects the scalars of v in order (arrays by index, maps by key).
func flatten(v any, out []string) []string {
	switch v := v.(type) {
	case string:
		if v != "" {
			out = append(out, v)
		}
	case []any:
		for _, e := range v {
			out = flatten(e, out)
		}
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			out = flatten(v[k], out)
		}
	}
	return out
}

func nextStart(d *xml.Decoder) (xml.StartElement, error) {
	for {
		tok, err := d.Token()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return xml.StartElement{}, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return t, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return xml.StartElement{}, errors.New("text outside the root element")
			}
		}
	}
}

// walkEnvelope reads the children of OPS_envelope until its end, decoding
// the first body/data_block into block.
func walkEnvelope(d *xml.Decoder, block *any, found *bool) error {
	for {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.EndElement:
			return nil
		case xml.StartElement:
			if !strings.EqualFold(t.Name.Local, "body") || *found {
				if err := d.Skip(); err != nil {
					return err
				}
				continue
			}
			if err := walkBody(d, block, found); err != nil {
				return err
			}
		}
	}
}

func walkBody(d *xml.Decoder, block *any, found *bool) error {
	for {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.EndElement:
			return nil
		case xml.StartElement:
			if !strings.EqualFold(t.Name.Local, "data_block") || *found {
				if err := d.Skip(); err != nil {
					return err
				}
				continue
			}
			v, err := decodeContent(d, 0)
			if err != nil {
				return fmt.Errorf("data_block: %w", err)
			}
			*block, *found = v, true
		}
	}
}

// decodeContent reads the content of an element up to its end tag: either
// text (a scalar) or exactly one container, which it returns.
func decodeContent(d *xml.Decoder, depth int) (any, error) {
	if depth > maxDecodeDepth {
		return nil, errors.New("nested too deeply")
	}
	var text strings.Builder
	var container any
	have := false
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			text.Write(t)
		case xml.EndElement:
			if have {
				return container, nil
			}
			return strings.TrimSpace(text.String()), nil
		case xml.StartElement:
			if have {
				return nil, fmt.Errorf("more than one value in one element (<%s>)", t.Name.Local)
			}
			v, err := decodeContainer(d, t, depth+1)
			if err != nil {
				return nil, err
			}
			container, have = v, true
		}
	}
}

func decodeContainer(d *xml.Decoder, start xml.StartElement, depth int) (any, error) {
	switch strings.ToLower(start.Name.Local) {
	case "dt_scalar", "dt_scalarref":
		return decodeContent(d, depth)
	case "dt_assoc":
		m := map[string]any{}
		err := decodeItems(d, depth, func(key string, v any) { m[key] = v })
		return m, err
	case "dt_array":
		type elem struct {
			idx int
			ok  bool
			pos int
			v   any
		}
		var elems []elem
		err := decodeItems(d, depth, func(key string, v any) {
			i, err := strconv.Atoi(strings.TrimSpace(key))
			elems = append(elems, elem{idx: i, ok: err == nil && i >= 0, pos: len(elems), v: v})
		})
		if err != nil {
			return nil, err
		}
		// Place by key; items with a non-numeric key keep document order
		// after the numbered ones.
		sort.SliceStable(elems, func(a, b int) bool {
			ea, eb := elems[a], elems[b]
			if ea.ok != eb.ok {
				return ea.ok
			}
			if ea.ok && ea.idx != eb.idx {
				return ea.idx < eb.idx
			}
			return ea.pos < eb.pos
		})
		out := make([]any, len(elems))
		for i, e := range elems {
			out[i] = e.v
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unexpected element <%s>", start.Name.Local)
	}
}

// decodeItems reads <item key="…"> children of a dt_assoc/dt_array until its
// end tag.
func decodeItems(d *xml.Decoder, depth int, add func(key string, v any)) error {
	for {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return errors.New("text between items")
			}
		case xml.EndElement:
			return nil
		case xml.StartElement:
			if !strings.EqualFold(t.Name.Local, "item") {
				return fmt.Errorf("unexpected element <%s> in container", t.Name.Local)
			}
			key, ok := "", false
			for _, a := range t.Attr {
				if strings.EqualFold(a.Name.Local, "key") {
					key, ok = a.Value, true
				}
			}
			if !ok {
				return errors.New("item without key")
			}
			v, err := decodeContent(d, depth+1)
			if err != nil {
				return err
			}
			add(key, v)
		}
	}
}
