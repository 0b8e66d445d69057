package tasks

import (
	"context"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
)

// TestEnqueueProducer: Options.Producer is recorded in the payload without
// touching the caller's payload; it is not part of the request's identity
// (the same request from another producer, or from the CLI, is a
// duplicate), and the mark of a request without one is keyed as before.
func TestEnqueueProducer(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)
		p := &DigiCertPayload{OrderID: "77", Locale: "en"}
		o := testOptions(DefaultDedupWindow)
		o.Producer = "billing"
		first, err := eb.enq.Enqueue(t.Context(), p, o)
		require.NoError(t, err)
		require.False(t, first.Duplicate)
		require.Empty(t, p.Producer, "the caller's payload is not changed")
		info, err := eb.insp.GetTaskInfo(QueueDigiCert, first.ID)
		require.NoError(t, err)
		require.JSONEq(t, `{"order_id":"77","locale":"en","producer":"billing"}`, string(info.Payload))

		// The mark is the one a request without producer has always had.
		n, err := eb.rdb.Exists(t.Context(), markKey(t, p)).Result()
		require.NoError(t, err)
		require.Equal(t, int64(1), n)

		o.Producer = "support"
		dup, err := eb.enq.Enqueue(t.Context(), &DigiCertPayload{OrderID: "77", Locale: "en"}, o)
		require.NoError(t, err)
		require.Equal(t, Enqueued{ID: first.ID, Duplicate: true}, dup)
		o.Producer = ""
		dup, err = eb.enq.Enqueue(t.Context(), &DigiCertPayload{OrderID: "77", Locale: "en"}, o)
		require.NoError(t, err)
		require.Equal(t, Enqueued{ID: first.ID, Duplicate: true}, dup)
		require.Len(t, eb.taskIDs(t, QueueDigiCert), 1)
	})
}

// TestProducerValidation: a bad producer name is refused by Options and by
// the payload; a batch line may not claim one.
func TestProducerValidation(t *testing.T) {
	t.Parallel()
	o := DefaultOptions()
	o.Producer = "has space"
	require.ErrorContains(t, o.Validate(), "producer: must be 1-64 characters")
	o.Producer = strings.Repeat("a", 65)
	require.Error(t, o.Validate())
	o.Producer = "billing-2.prod_eu"
	require.NoError(t, o.Validate())

	_, err := Decode(TypeOpenSRSResendCertEmail, []byte(`{"order_id":"1","producer":"bad name"}`))
	require.ErrorContains(t, err, "producer:")

	for _, line := range []string{
		`{"provider":"opensrs","order_id":"1","producer":"someone"}`,
		`{"provider":"digicert","order_id":"1","Producer":""}`,
	} {
		_, err := DecodeLine([]byte(line))
		require.ErrorContains(t, err, "unknown field", line)
	}
}

// TestDecodeWithAndWithoutProducer: the worker decodes payloads written
// before producer existed and those carrying it alike.
func TestDecodeWithAndWithoutProducer(t *testing.T) {
	t.Parallel()
	p, err := Decode(TypeOpenSRSResendApproveEmail, []byte(`{"order_id":"12","reference":"r"}`))
	require.NoError(t, err)
	require.Empty(t, p.From())
	p, err = Decode(TypeOpenSRSResendApproveEmail, []byte(`{"order_id":"12","reference":"r","producer":"portal"}`))
	require.NoError(t, err)
	require.Equal(t, "portal", p.From())
	require.Equal(t, providers.Request{OrderID: "12", Action: providers.ActionResendApproveEmail}, p.Request())
}

// TestHandlerRecordsProducer: each attempt of a task enqueued with a
// producer names it in the outcomes.
func TestHandlerRecordsProducer(t *testing.T) {
	t.Parallel()
	hb := setupHandler(t, redistest.Mini(t), func(context.Context, int, providers.Request) (providers.Result, error) {
		return providers.Result{Provider: providers.OpenSRS, StatusCode: 200, Code: "200", Message: "sent"}, nil
	})
	hb.start(t)
	o := handlerOptions(1)
	o.Producer = "portal"
	e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("31", "", false), o)
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStateCompleted, hb.waitFinal(t, QueueOpenSRS, e.ID).State)
	as := hb.attempts(t, e.ID)
	require.Len(t, as, 1)
	require.Equal(t, outcome.Succeeded, as[0].Outcome)
	require.Equal(t, "portal", as[0].Producer)
}

// TestEnqueueBatchItemOptions: an item's own options replace the batch's.
func TestEnqueueBatchItemOptions(t *testing.T) {
	t.Parallel()
	eb := setupEnqueue(t, redistest.Mini(t))
	own := testOptions(0)
	own.MaxRetry = 7
	own.Producer = "portal"
	items := []BatchItem{
		{N: 1, Line: []byte(`{"provider":"opensrs","order_id":"1"}`)},
		{N: 2, Line: []byte(`{"provider":"opensrs","order_id":"2"}`), Opts: &own},
		{N: 3, Line: []byte(`{"provider":"opensrs","order_id":"x"}`)},
	}
	var results []BatchResult
	failed, err := eb.enq.EnqueueBatch(t.Context(), testOptions(0), func(yield func(BatchItem) bool) error {
		for _, it := range items {
			if !yield(it) {
				break
			}
		}
		return nil
	}, 2, func(r BatchResult) { results = append(results, r) }, nil)
	require.NoError(t, err)
	require.Equal(t, 1, failed)
	require.Len(t, results, 3)
	for i, r := range results {
		require.Equal(t, i+1, r.N, "in input order")
	}
	require.ErrorContains(t, results[2].Err, "order_id")
	i1, err := eb.insp.GetTaskInfo(QueueOpenSRS, results[0].ID)
	require.NoError(t, err)
	require.Equal(t, 3, i1.MaxRetry)
	i2, err := eb.insp.GetTaskInfo(QueueOpenSRS, results[1].ID)
	require.NoError(t, err)
	require.Equal(t, 7, i2.MaxRetry)
	require.JSONEq(t, `{"order_id":"2","producer":"portal"}`, string(i2.Payload))
}
