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
