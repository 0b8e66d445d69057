package api

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/certmail/certmail/internal/tasks"
)

// MinTokenLen is the shortest token accepted in the tokens file: 128 bits
// of hex, so that a token cannot be guessed within any rate limit.
const MinTokenLen = 32

// Tokens is the set of bearer tokens the API accepts, each with the name
// recorded on the tasks it enqueues. Reload swaps the whole set at once;
// Lookup is safe for concurrent use with it.
type Tokens struct {
	path string
	set  atomic.Pointer[[]token]
}

type token struct {
	name string
	sum  [32]byte // SHA-256 of the token: compared in constant time, fixed length
}

// LoadTokens reads the tokens file at path (see ParseTokens).
func LoadTokens(path string) (*Tokens, error) {
	t := &Tokens{path: path}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload reads the file again; on error the current set stays.
func (t *Tokens) Reload() error {
	f, err := os.Open(t.path)
	if err != nil {
		return fmt.Errorf("API_TOKENS_FILE: %v", err)
	}
	defer f.Close()
	set, err := ParseTokens(f)
	if err != nil {
		return fmt.Errorf("API_TOKENS_FILE %s: %v", t.path, err)
	}
	t.set.Store(&set)
	return nil
}

// Len is the number of tokens loaded.
func (t *Tokens) Len() int { return len(*t.set.Load()) }

// ParseTokens reads one "name:token" a line; blank lines and lines starting
// with # are skipped. Names follow tasks.ValidateProducer; tokens are at
// least MinTokenLen printable ASCII characters without spaces. A name or a
// token given twice is an error. Errors name the line, never the token.
func ParseTokens(r io.Reader) ([]token, error) {
	var set []token
	names := map[string]bool{}
	sums := map[[32]byte]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: want name:token", n)
		}
		if err := tasks.ValidateProducer(name); err != nil {
			return nil, fmt.Errorf("line %d: name %v", n, err)
		}
		if len(tok) < MinTokenLen {
			return nil, fmt.Errorf("line %d (%s): token must be at least %d characters", n, name, MinTokenLen)
		}
		for _, c := range tok {
			if c <= ' ' || c > '~' {
				return nil, fmt.Errorf("line %d (%s): token must be printable ASCII without spaces", n, name)
			}
		}
		sum := sha256.Sum256([]byte(tok))
		if names[name] {
			return nil, fmt.Errorf("line %d: name %s given twice", n, name)
		}
		if sums[sum] {
			return nil, fmt.Errorf("line %d (%s): token already given to another name", n, name)
		}
		names[name], sums[sum] = true, true
		set = append(set, token{name: name, sum: sum})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("no tokens (want one name:token a line)")
	}
	return set, nil
}

// Lookup returns the name of the token given, comparing it with every
// token in constant time (the SHA-256 sums are compared, so the time does
// not depend on the lengths either).
func (t *Tokens) Lookup(given string) (string, bool) {
	sum := sha256.Sum256([]byte(given))
	found := ""
	for _, tk := range *t.set.Load() {
		if subtle.ConstantTimeCompare(sum[:], tk.sum[:]) == 1 {
			found = tk.name
		}
	}
	return found, found != ""
}
