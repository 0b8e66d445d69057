package cli

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantPos []string
		wantX   string
		wantB   bool
		wantErr string
	}{
		{"flags first", []string{"-x", "1", "a", "b"}, []string{"a", "b"}, "1", false, ""},
		{"flags after positionals", []string{"a", "--x", "2", "b", "--b"}, []string{"a", "b"}, "2", true, ""},
		{"double dash ends flags", []string{"a", "--", "--b", "-x"}, []string{"a", "--b", "-x"}, "", false, ""},
		{"unknown flag", []string{"a", "--nope"}, nil, "", false, "flag provided but not defined: -nope (see t --help)"},
		{"missing value", []string{"-x"}, nil, "", false, "flag needs an argument: -x (see t --help)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fs := NewFlagSet("t", "Usage: t\n")
			x := fs.String("x", "", "")
			b := fs.Bool("b", false, "")
			pos, err := Parse(fs, tc.args, io.Discard)
			if tc.wantErr != "" {
				var ue UsageError
				require.ErrorAs(t, err, &ue)
				require.Equal(t, tc.wantErr, ue.Msg)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantPos, pos)
			require.Equal(t, tc.wantX, *x)
			require.Equal(t, tc.wantB, *b)
		})
	}
}

func TestParseHelpGoesToStdout(t *testing.T) {
	t.Parallel()
	fs := NewFlagSet("t", "Usage: t [flags]\n")
	fs.String("x", "", "the x flag")
	var out bytes.Buffer
	_, err := Parse(fs, []string{"a", "--help"}, &out)
	require.ErrorIs(t, err, ErrHelp)
	require.Contains(t, out.String(), "Usage: t [flags]")
	require.Contains(t, out.String(), "the x flag")
}

func TestReport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		err      error
		wantCode int
		wantErr  string
	}{
		{"ok", nil, ExitOK, ""},
		{"help", ErrHelp, ExitOK, ""},
		{"silent failure", ErrSilent, ExitFailure, ""},
		{"usage, folded to one line", Usagef("--x: bad\nvalue"), ExitUsage, "cmd: --x: bad value\n"},
		{"runtime", errors.New("redis unreachable\nat x"), ExitFailure, "cmd: redis unreachable at x\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			require.Equal(t, tc.wantCode, Report(&stderr, "cmd", tc.err))
			require.Equal(t, tc.wantErr, stderr.String())
		})
	}
}

func TestRedisURLFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ env, want string }{
		{"", "redis://127.0.0.1:6379/0"},
		{"redis://example:6380/2", "redis://example:6380/2"},
	} {
		fs := NewFlagSet("t", "")
		var u string
		RedisURLFlag(fs, &u, func(string) string { return tc.env })
		require.NoError(t, fs.Parse(nil))
		require.Equal(t, tc.want, u)
	}
}
