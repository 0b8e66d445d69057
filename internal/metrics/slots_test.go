package metrics

import (
	"testing"

	"github.com/stretchr/testify/require"
)

type slotGauge struct{ inUse, waiting int64 }

func (g *slotGauge) InUse() int64   { return g.inUse }
func (g *slotGauge) Waiting() int64 { return g.waiting }

// TestWatchSlots: each capped provider gets its slots-in-use and waiting
// gauges, read at scrape time.
func TestWatchSlots(t *testing.T) {
	t.Parallel()
	m := New(nil, nil, nil)
	g := &slotGauge{inUse: 2, waiting: 7}
	m.WatchSlots(map[string]SlotGauge{"opensrs": g})
	g.inUse = 1
	got := map[string]float64{}
	families, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, f := range families {
		for _, s := range f.GetMetric() {
			if s.GetGauge() == nil || len(s.GetLabel()) != 1 {
				continue
			}
			got[f.GetName()+"/"+s.GetLabel()[0].GetValue()] = s.GetGauge().GetValue()
		}
	}
	require.Equal(t, 1.0, got["certmail_in_flight_slots/opensrs"], "read at scrape time")
	require.Equal(t, 7.0, got["certmail_in_flight_waiting/opensrs"])
}

type circuit bool

func (c *circuit) Open() bool { return bool(*c) }

// TestWatchCircuits: certmail_provider_circuit_open is 1 while the
// provider's circuit is open, 0 once closed, read at scrape time.
func TestWatchCircuits(t *testing.T) {
	t.Parallel()
	m := New(nil, nil, nil)
	c := circuit(true)
	m.WatchCircuits(map[string]CircuitGauge{"digicert": &c})
	value := func() float64 {
		families, err := m.Registry().Gather()
		require.NoError(t, err)
		for _, f := range families {
			if f.GetName() == "certmail_provider_circuit_open" {
				require.Len(t, f.GetMetric(), 1)
				require.Equal(t, "digicert", f.GetMetric()[0].GetLabel()[0].GetValue())
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no certmail_provider_circuit_open")
		return 0
	}
	require.Equal(t, 1.0, value())
	c = false
	require.Equal(t, 0.0, value())
}

type limiterGauge struct {
	waits, refusals int64
	waited          float64
}

func (g *limiterGauge) Waits() int64           { return g.waits }
func (g *limiterGauge) Refusals() int64        { return g.refusals }
func (g *limiterGauge) WaitedSeconds() float64 { return g.waited }

// TestWatchLimiters: each rate-limited provider gets its waits, refusals
// and wait-seconds counters, read at scrape time.
func TestWatchLimiters(t *testing.T) {
	t.Parallel()
	m := New(nil, nil, nil)
	g := &limiterGauge{}
	m.WatchLimiters(map[string]LimiterGauge{"digicert": g})
	g.waits, g.refusals, g.waited = 4, 3, 1.5
	got := map[string]float64{}
	families, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, f := range families {
		for _, s := range f.GetMetric() {
			if s.GetCounter() == nil || len(s.GetLabel()) != 1 {
				continue
			}
			got[f.GetName()+"/"+s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
		}
	}
	require.Equal(t, 4.0, got["certmail_rate_limit_waits_total/digicert"])
	require.Equal(t, 3.0, got["certmail_rate_limit_refusals_total/digicert"])
	require.Equal(t, 1.5, got["certmail_rate_limit_wait_seconds_total/digicert"])
}
