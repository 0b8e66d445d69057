package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// DecodeLine parses and validates one line of `enqueue batch` input: a JSON
// object with "provider", optionally "type" (a task type of that provider;
// the provider's first kind in the table when absent) and the payload fields
// of that type. A field no task type has is an error, not silently dropped.
func DecodeLine(line []byte) (Payload, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil, errors.New("empty line (want a JSON object)")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("invalid JSON: want an object, got %s", te.Value)
		}
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if dec.More() {
		return nil, errors.New("invalid JSON: more than one value on the line")
	}
	provider, err := takeString(fields, "provider")
	if err != nil {
		return nil, err
	}
	typ, err := takeString(fields, "type")
	if err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(fields))
	for _, n := range names {
		if strings.EqualFold(n, "producer") {
			// Recorded by the enqueuer (the API's token name), never
			// claimed by the request.
			return nil, fmt.Errorf("invalid JSON: json: unknown field %q", n)
		}
		if len(providersWith(n)) == 0 {
			return nil, fmt.Errorf("invalid JSON: json: unknown field %q", n)
		}
	}
	if err := CheckProvider(provider); err != nil {
		return nil, err
	}
	// A field of another type left empty is dropped: one script may write
	// the same columns for every provider.
	for _, n := range names {
		if ps := providersWith(n); !slices.Contains(ps, provider) {
			if !isEmpty(fields[n]) {
				return nil, fmt.Errorf("%s: only for provider %s", n, OrList(ps))
			}
			delete(fields, n)
		}
	}
	k, err := lineKind(provider, typ)
	if err != nil {
		return nil, err
	}
	for n, v := range fields {
		if !hasField(k, n) {
			if !isEmpty(v) {
				return nil, fmt.Errorf("%s: not a field of type %s", n, k.Type)
			}
			delete(fields, n)
		}
	}
	rest, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	p := k.New()
	dec = json.NewDecoder(bytes.NewReader(rest))
	dec.DisallowUnknownFields() // nested objects too: a misspelt field must not be dropped
	if err := dec.Decode(p); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// isEmpty reports whether a JSON value is null, "", [] or {}.
func isEmpty(v json.RawMessage) bool {
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return false
	}
	switch b.String() {
	case "null", `""`, "[]", "{}":
		return true
	}
	return false
}

// lineKind is the kind a line of provider asks for with typ.
func lineKind(provider, typ string) (Kind, error) {
	for _, k := range kinds {
		if string(k.Provider) == provider && (typ == "" || typ == k.Type) {
			return k, nil
		}
	}
	var types []string
	for _, k := range kinds {
		if string(k.Provider) == provider {
			types = append(types, k.Type)
		}
	}
	return Kind{}, fmt.Errorf("type: %q is not a%s %s task type (want %s)", typ, article(provider), provider, OrList(types))
}

// article keeps "an opensrs task type" readable.
func article(word string) string {
	if word != "" && strings.ContainsRune("aeiou", rune(word[0])) {
		return "n"
	}
	return ""
}

// takeString removes the string field name from fields and returns it. Keys
// match as encoding/json matches struct fields: exactly, else ignoring case.
func takeString(fields map[string]json.RawMessage, name string) (string, error) {
	key, ok := name, false
	if _, ok = fields[name]; !ok {
		for k := range fields {
			if strings.EqualFold(k, name) {
				key, ok = k, true
				break
			}
		}
	}
	if !ok {
		return "", nil
	}
	raw := fields[key]
	delete(fields, key)
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("invalid JSON: %s: %v", name, err)
	}
	return s, nil
}

// providersWith lists the providers having a task type with the payload
// field name.
func providersWith(name string) []string {
	var ps []string
	for _, k := range kinds {
		if hasField(k, name) && !slices.Contains(ps, string(k.Provider)) {
			ps = append(ps, string(k.Provider))
		}
	}
	return ps
}

// hasField reports whether k's payload has the JSON field name, asking
// encoding/json itself so that its name matching rules hold.
func hasField(k Kind, name string) bool {
	obj, err := json.Marshal(map[string]any{name: nil})
	if err != nil {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(obj))
	dec.DisallowUnknownFields()
	return dec.Decode(k.New()) == nil
}
