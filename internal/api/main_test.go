package api

import (
	"testing"

	"github.com/certmail/certmail/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }
