package deadletter

import "github.com/certmail/certmail/internal/outcome"

// View is a dead letter as `dlq list --json` and `dlq show --json` print it:
// the stored record with every key present. The record omits an empty
// reference to stay small in Redis; the JSON contract promises the key. The
// record is embedded, not copied, so a field added to outcome.DeadLetter
// shows up here without a second edit.
type View struct {
	outcome.DeadLetter
	// Reference shadows the record's omitempty field: encoding/json lets
	// the shallower of two same-named fields win.
	Reference string `json:"reference"`
}

// NewView returns the JSON view of d.
func NewView(d outcome.DeadLetter) View {
	return View{DeadLetter: d, Reference: d.Reference}
}

// DetailView is `dlq show --json`: the View plus the asynq state and the
// attempts.
type DetailView struct {
	View
	// State is null when asynq no longer holds the task.
	State *string `json:"asynq_state"`
	// Attempts is an array, never null.
	Attempts []outcome.Attempt `json:"attempts"`
}

// View returns the JSON view of d.
func (d Detail) View() DetailView {
	v := DetailView{View: NewView(d.DeadLetter), Attempts: d.Attempts}
	if d.State != "" {
		v.State = &d.State
	}
	if v.Attempts == nil {
		v.Attempts = []outcome.Attempt{}
	}
	return v
}
