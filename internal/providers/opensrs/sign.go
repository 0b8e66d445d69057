package opensrs

import (
	"crypto/md5"
	"encoding/hex"
)

// Sign returns the X-Signature of body for apiKey:
// lowercase_hex(md5(lowercase_hex(md5(body ‖ apiKey)) ‖ apiKey)).
// body must be exactly the bytes sent on the wire.
//
// OpenSRS docs: https://domains.opensrs.guide/docs/writing-your-own-client
func Sign(body []byte, apiKey string) string {
	h := md5.New()
	h.Write(body)
	h.Write([]byte(apiKey))
	h1 := hex.EncodeToString(h.Sum(nil))
	h.Reset()
	h.Write([]byte(h1))
	h.Write([]byte(apiKey))
	return hex.EncodeToString(h.Sum(nil))
}
