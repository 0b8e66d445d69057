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
