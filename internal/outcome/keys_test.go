package outcome

import "github.com/certmail/certmail/internal/rdb"

// The rdb layer's key builders under the names these tests grew up with.
var (
	attemptsKey      = rdb.AttemptsKey
	deadKey          = rdb.DeadKey
	doneKey          = rdb.DoneKey
	inflightKey      = rdb.InflightKey
	deadClaimKey     = rdb.DeadClaimKey
	tombKey          = rdb.TombKey
	asynqArchivedKey = rdb.AsynqArchivedKey
	asynqTaskKey     = rdb.AsynqTaskKey
)

const (
	streamKey    = rdb.OutcomesKey
	deadIndexKey = rdb.DeadIndexKey
)
