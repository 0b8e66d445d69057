package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readmeRow is one setting as the README's worker table documents it.
type readmeRow struct {
	env, flag, def string
}

var (
	envToken  = regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")
	flagToken = regexp.MustCompile("`--([a-z][a-z0-9-]*)`")
)

// readmeSettings parses the table under "## Run the worker". A row may
// document several settings: "`RETRY_BASE` / `RETRY_MAX` | `--retry-base` /
// `--retry-max` | 30s / 1h" pairs them in order; a secret (NAME with
// NAME_FILE or "/ `_FILE`") takes no flag and no default.
func readmeSettings(t *testing.T) []readmeRow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	text := string(b)
	i := strings.Index(text, "## Run the worker")
	require.GreaterOrEqual(t, i, 0, "README has no worker section")
	text = text[i:]
	i = strings.Index(text, "| variable | flag | default |")
	require.GreaterOrEqual(t, i, 0, "README's worker section has no settings table")
	var rows []readmeRow
	for _, line := range strings.Split(text[i:], "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		require.GreaterOrEqual(t, len(cells), 5, "row %q", line)
		vars, flags := cells[1], cells[2]
		defs := strings.Split(cells[3], " / ")
		var envs []string
		for _, m := range envToken.FindAllStringSubmatch(vars, -1) {
			if !strings.HasSuffix(m[1], "_FILE") && m[1] != "_FILE" {
				envs = append(envs, m[1])
			}
		}
		var fl []string
		for _, m := range flagToken.FindAllStringSubmatch(flags, -1) {
			fl = append(fl, m[1])
		}
		if len(envs) == 0 { // a flag-only setting
			require.Len(t, fl, 1, "row %q", line)
			rows = append(rows, readmeRow{flag: fl[0], def: readmeDefault(cells[3])})
			continue
		}
		for k, env := range envs {
			r := readmeRow{env: env}
			if !isSecret(env) {
				require.NotEmpty(t, fl, "row %q: %s has no flag", line, env)
				r.flag, fl = fl[0], fl[1:]
				r.def = readmeDefault(defs[min(k, len(defs)-1)])
			}
			rows = append(rows, r)
		}
		require.Empty(t, fl, "row %q: flags without a variable", line)
	}
	require.NotEmpty(t, rows)
	return rows
}

// readmeDefault reads a default cell: backticks and a parenthesised note
// dropped, "—" for none.
func readmeDefault(cell string) string {
	s := strings.TrimSpace(cell)
	if i := strings.Index(s, " ("); i >= 0 {
		s = s[:i]
	}
	s = strings.Trim(s, "`")
	if s == "—" {
		return ""
	}
	return s
}

func isSecret(env string) bool {
	for _, s := range settings {
		if s.env == env {
			_, ok := s.field(&config{}).(*secret)
			return ok
		}
	}
	return false
}

// sameDefault compares defaults as values: 1h and 1h0m0s are one duration.
func sameDefault(a, b string) bool {
	if a == b {
		return true
	}
	da, errA := time.ParseDuration(a)
	db, errB := time.ParseDuration(b)
	return errA == nil && errB == nil && da == db
}

// TestREADMESettingsTable: every row of the README's worker table names a
// setting of the settings table with the same flag and default, and every
// setting of the table (but the demo's own flags) has its row.
func TestREADMESettingsTable(t *testing.T) {
	t.Parallel()
	rows := readmeSettings(t)
	key := func(env, flag string) string { return env + " --" + flag }
	documented := map[string]readmeRow{}
	for _, r := range rows {
		documented[key(r.env, r.flag)] = r
	}
	known := map[string]bool{}
	for _, s := range settings {
		if s.offTable {
			continue
		}
		k := key(s.env, s.flag)
		known[k] = true
		t.Run(s.name(), func(t *testing.T) {
			r, ok := documented[k]
			require.True(t, ok, "README's worker table has no row for %s", s.name())
			require.True(t, sameDefault(r.def, s.def), "README default %q, settings table %q", r.def, s.def)
		})
	}
	for _, r := range rows {
		require.True(t, known[key(r.env, r.flag)], "README documents %s --%s, which the settings table does not have", r.env, r.flag)
	}
}

// TestSettingsDefaultsParse: every default is valid for its kind and passes
// its own check, so a worker started with nothing but credentials runs.
func TestSettingsDefaultsParse(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(nil, nil, envOf(map[string]string{"DIGICERT_API_KEY": "k"}))
	require.NoError(t, err)
	require.Equal(t, 20, cfg.concurrency)
	require.Equal(t, 90*time.Second, cfg.providerTimeout)
	require.Equal(t, time.Hour, cfg.retryMax)
	require.True(t, cfg.demoTasks)
	for _, s := range settings {
		require.NotEmpty(t, s.help, s.name())
		require.True(t, s.env != "" || s.flag != "", "a setting needs a variable or a flag")
	}
}

func TestDurationDefault(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		30 * time.Second: "30s", time.Minute: "1m", time.Hour: "1h", 90 * time.Minute: "1h30m", 2160 * time.Hour: "2160h", 90 * time.Second: "1m30s",
	} {
		require.Equal(t, want, durationDefault(d))
		require.True(t, sameDefault(want, d.String()))
	}
}
