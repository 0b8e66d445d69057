package metrics

import "github.com/prometheus/client_golang/prometheus"

// SlotGauge reads one provider's in-flight cap as this worker sees it;
// *inflight.Resender implements it.
type SlotGauge interface {
	InUse() int64
	Waiting() int64
}

// WatchSlots exports, for each provider with an in-flight cap,
// certmail_in_flight_slots{provider} (slots this worker holds now: the sum
// over workers is the fleet's use of the cap) and
// certmail_in_flight_waiting{provider} (calls of this worker waiting for a
// slot). Both are read from memory at scrape time, with no Redis call.
func (m *Metrics) WatchSlots(gauges map[string]SlotGauge) {
	for provider, g := range gauges {
		labels := prometheus.Labels{"provider": provider}
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certmail_in_flight_slots", ConstLabels: labels,
				Help: "Slots of the fleet-wide in-flight cap held by this worker now."}, func() float64 { return float64(g.InUse()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certmail_in_flight_waiting", ConstLabels: labels,
				Help: "Calls of this worker waiting for a slot of the in-flight cap."}, func() float64 { return float64(g.Waiting()) }),
		)
	}
}

// CircuitGauge reads one provider's outage circuit as this worker last saw
// it; *outage.Resender implements it.
type CircuitGauge interface {
	Open() bool
}

// WatchCircuits exports certmail_provider_circuit_open{provider}: 1 while
// the provider's outage circuit is open (calls held back, one probe per
// interval), 0 when closed, as this worker last saw it on a call (no Redis
// call at scrape time). Only providers with outage handling have it.
func (m *Metrics) WatchCircuits(gauges map[string]CircuitGauge) {
	for provider, g := range gauges {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certmail_provider_circuit_open",
			ConstLabels: prometheus.Labels{"provider": provider},
			Help:        "1 while the provider's fleet-wide outage circuit is open (as this worker last saw it), else 0."},
			func() float64 {
				if g.Open() {
					return 1
				}
				return 0
			}))
	}
}

// LimiterGauge reads one provider's rate limiter as this worker used it;
// *ratelimit.Resender implements it.
type LimiterGauge interface {
	Waits() int64
	Refusals() int64
	WaitedSeconds() float64
}

// WatchLimiters exports, for each provider with a rate limit,
// certmail_rate_limit_waits_total{provider} (waits for a slot taken in
// place), certmail_rate_limit_refusals_total{provider} (calls sent back to
// the queue for a slot, recorded as local_rate_limit) and
// certmail_rate_limit_wait_seconds_total{provider} (time spent in those
// waits), all of this worker, read from memory at scrape time.
func (m *Metrics) WatchLimiters(gauges map[string]LimiterGauge) {
	for provider, g := range gauges {
		labels := prometheus.Labels{"provider": provider}
		m.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "certmail_rate_limit_waits_total", ConstLabels: labels,
				Help: "Waits for a rate-limit slot taken in place by this worker."}, func() float64 { return float64(g.Waits()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "certmail_rate_limit_refusals_total", ConstLabels: labels,
				Help: "Calls this worker sent back to the queue to wait for a rate-limit slot (local_rate_limit)."}, func() float64 { return float64(g.Refusals()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "certmail_rate_limit_wait_seconds_total", ConstLabels: labels,
				Help: "Seconds this worker spent waiting in place for rate-limit slots."}, g.WaitedSeconds),
		)
	}
}
