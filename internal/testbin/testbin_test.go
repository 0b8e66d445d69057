package testbin

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBuildRunsTheCommand(t *testing.T) {
	bin := Build(t, "cmd/dlq")
	require.Equal(t, bin, Build(t, "cmd/dlq"), "built once per test binary")
	out, err := exec.Command(bin, "--help").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.True(t, strings.Contains(string(out), "dlq"), "%s", out)
	Remove()
}
