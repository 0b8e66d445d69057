package metrics

import "github.com/hibiken/asynq"

// QueueInspector is queueInspector, for tests that count its calls.
type QueueInspector = queueInspector

// WrapInspector replaces the inspector of m with wrap(current).
func WrapInspector(m *Metrics, wrap func(QueueInspector) QueueInspector) {
	m.inspect = wrap(m.inspect)
}

var _ QueueInspector = (*asynq.Inspector)(nil)
