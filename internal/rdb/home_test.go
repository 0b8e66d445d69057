package rdb

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNoKeyOrScriptOutsideRDB: certmail's key names and Lua scripts live in
// this package only. Every other .go file of the module, tests included,
// goes through its methods and key builders, so that a key's name, type,
// lifetime and slot-mates can be checked in one place.
func TestNoKeyOrScriptOutsideRDB(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(root, "go.mod"))
	require.NoError(t, err, "the module root is two levels up")
	own := filepath.Join(root, "internal", "rdb")

	var offenders []string
	var walked int
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path == own || path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "docs") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		walked++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, s := range []string{Prefix, "redis.call", `"rate:`} {
				if strings.Contains(line, s) {
					rel, _ := filepath.Rel(root, path)
					offenders = append(offenders, rel+":"+strconv.Itoa(i+1)+": "+strings.TrimSpace(line))
				}
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, walked, 50, "the walk found the module's files")
	require.Empty(t, offenders, "Redis key strings or Lua scripts outside internal/rdb: use its methods and key builders")
}
