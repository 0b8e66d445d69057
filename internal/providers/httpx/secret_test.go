package httpx_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/httpx"
)

const testKey = "0123456789ABCDEF0123456789abcdef"

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	s := httpx.Secret(testKey)
	holder := struct {
		K  httpx.Secret
		P  *httpx.Secret
		Ks []httpx.Secret
	}{s, &s, []httpx.Secret{s}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		require.Equal(t, httpx.Redacted, fmt.Sprintf(verb, s), verb)
		out := fmt.Sprintf(verb, holder)
		require.NotContains(t, out, testKey, verb)
		require.NotContains(t, out, fmt.Sprintf("%x", testKey), verb)
	}
	require.Equal(t, httpx.Redacted, s.String())
	require.Equal(t, httpx.Redacted, s.GoString())
	b, err := json.Marshal(holder)
	require.NoError(t, err)
	require.NotContains(t, string(b), testKey)
	require.Equal(t, testKey, s.Reveal())
}

func TestSecretScrub(t *testing.T) {
	t.Parallel()
	s := httpx.Secret(testKey)
	require.Equal(t, "key=[redacted] again [redacted]", s.Scrub("key="+testKey+" again "+testKey))
	require.Equal(t, "nothing here", s.Scrub("nothing here"))
	require.Equal(t, "text", httpx.Secret("").Scrub("text"))
}
