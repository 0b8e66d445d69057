package redact

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
)

// NewHandler wraps h so that every record's message and every attribute
// (nested groups, errors, Stringers and values the JSON handler would
// marshal included) has its email addresses masked before h sees it. The
// worker builds its logger on it, so no call site has to remember.
func NewHandler(h slog.Handler) slog.Handler {
	if m, ok := h.(*handler); ok {
		return m
	}
	return &handler{next: h}
}

type handler struct{ next slog.Handler }

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, Emails(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	masked := make([]slog.Attr, len(as))
	for i, a := range as {
		masked[i] = attr(a)
	}
	return &handler{next: h.next.WithAttrs(masked)}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{next: h.next.WithGroup(Emails(name))}
}

func attr(a slog.Attr) slog.Attr {
	return slog.Attr{Key: Emails(a.Key), Value: value(a.Value)}
}

func value(v slog.Value) slog.Value {
	v = v.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.StringValue(Emails(v.String()))
	case slog.KindGroup:
		as := v.Group()
		masked := make([]slog.Attr, len(as))
		for i, a := range as {
			masked[i] = attr(a)
		}
		return slog.GroupValue(masked...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case nil:
			return v
		case error:
			return slog.StringValue(Emails(x.Error()))
		case []byte:
			// The JSON handler would print it in base64, past any masking.
			return slog.StringValue(Emails(string(x)))
		case fmt.Stringer:
			return slog.StringValue(Emails(x.String()))
		default:
			b, err := json.Marshal(x)
			if err != nil {
				return slog.StringValue(Emails(fmt.Sprintf("%+v", x)))
			}
			return slog.AnyValue(maskedJSON(JSON(b)))
		}
	default:
		return v // numbers, bools, times, durations
	}
}

// maskedJSON is an already masked JSON value: the JSON handler embeds it
// as is, the text handler prints it as text.
type maskedJSON []byte

func (m maskedJSON) MarshalJSON() ([]byte, error) { return m, nil }
func (m maskedJSON) String() string               { return string(m) }
