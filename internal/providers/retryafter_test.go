package providers_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		value  string
		want   time.Duration
		wantOK bool
	}{
		{"Seconds", "120", 2 * time.Minute, true},
		{"Zero", "0", 0, true},
		{"Spaces", " 5 ", 5 * time.Second, true},
		{"AtCap", "3600", time.Hour, true},
		{"JustOverCap", "3601", providers.MaxRetryAfter, true},
		{"OneYear", "31536000", providers.MaxRetryAfter, true},
		{"OverflowsDuration", "99999999999", providers.MaxRetryAfter, true},
		{"OverflowsInt64", "99999999999999999999999", providers.MaxRetryAfter, true},
		{"Negative", "-1", 0, false},
		{"NegativeHuge", "-99999999999999999999999", 0, false},
		{"Plus", "+5", 0, false},
		{"HTTPDate", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"RFC850", now.Add(time.Minute).Format("Monday, 02-Jan-06 15:04:05 GMT"), time.Minute, true},
		{"PastDate", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"FarDate", now.Add(1000 * time.Hour).Format(http.TimeFormat), providers.MaxRetryAfter, true},
		{"Year9999", "Fri, 31 Dec 9999 23:59:59 GMT", providers.MaxRetryAfter, true},
		{"Empty", "", 0, false},
		{"Garbage", "soon", 0, false},
		{"Fraction", "1.5", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := providers.ParseRetryAfter(tc.value, now)
			require.Equal(t, tc.wantOK, ok)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestWithLastAttempt(t *testing.T) {
	t.Parallel()
	_, ok := providers.LastAttemptUntil(t.Context())
	require.False(t, ok, "unmarked")

	tests := []struct {
		name    string
		timeout time.Duration // 0: no deadline
		reserve time.Duration // time left to the call after the waits
	}{
		{"LongDeadlineKeepsCallReserve", time.Minute, providers.CallReserve},
		{"ShortDeadlineKeepsHalf", 6 * time.Second, 3 * time.Second},
		{"NoDeadline", 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			until, ok := providers.LastAttemptUntil(providers.WithLastAttempt(ctx))
			require.True(t, ok)
			if dl, has := ctx.Deadline(); has {
				require.WithinDuration(t, dl.Add(-tc.reserve), until, 50*time.Millisecond)
			} else {
				require.WithinDuration(t, time.Now().Add(providers.CallReserve), until, 50*time.Millisecond)
			}
		})
	}
}
