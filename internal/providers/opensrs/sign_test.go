package opensrs

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The test vector of docs/opensrs.md §3 (fake key).
const vectorKey = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"

var vectorBody = strings.Join([]string{
	`<?xml version='1.0' encoding='UTF-8' standalone='no' ?>`,
	`<!DOCTYPE OPS_envelope SYSTEM 'ops.dtd'>`,
	`<OPS_envelope>`,
	`<header><version>0.9</version></header>`,
	`<body><data_block><dt_assoc>`,
	`<item key="protocol">XCP</item>`,
	`<item key="action">resend_cert_email</item>`,
	`<item key="object">trust_service</item>`,
	`<item key="attributes"><dt_assoc><item key="order_id">1799</item></dt_assoc></item>`,
	`</dt_assoc></data_block></body>`,
	`</OPS_envelope>`,
}, "\n")

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestSignVector(t *testing.T) {
	t.Parallel()
	body := []byte(vectorBody)
	require.Len(t, vectorKey, 80)
	require.Len(t, body, 428)
	require.Equal(t, byte('>'), body[len(body)-1])
	sum := sha256.Sum256(body)
	require.Equal(t, "ad688fe6ccf31479fc3bf5af61133cd1a04f75002d3fd8d512ec09f9c4062c55", hex.EncodeToString(sum[:]))

	h1 := md5hex(vectorBody + vectorKey)
	require.Equal(t, "3e72874a587525b545ab89d5d6d316e0", h1)
	require.Equal(t, "e653bd472a1ad4f56071da78f7bbc65a", md5hex(h1+vectorKey))
	require.Equal(t, "e653bd472a1ad4f56071da78f7bbc65a", Sign(body, vectorKey))
}

func TestSignSensitivity(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sig  func() string
		want string
	}{
		{"TrailingNewline", func() string { return Sign([]byte(vectorBody+"\n"), vectorKey) }, "430ef44863163a41938a684d93db3669"},
		{"UppercaseH1", func() string {
			return md5hex(strings.ToUpper(md5hex(vectorBody+vectorKey)) + vectorKey)
		}, "e1bf60f3adf73fa189ca0a893e5469c2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := tc.sig()
			require.Equal(t, tc.want, got)
			require.NotEqual(t, Sign([]byte(vectorBody), vectorKey), got)
		})
	}
}

// TestMD5SelfTest is the MD5 library check of the OpenSRS troubleshooting page.
func TestMD5SelfTest(t *testing.T) {
	t.Parallel()
	require.Equal(t, "e787cc1d1951dfec4827cede7b1a0933", md5hex("ConnecttoOpenSRSviaSSL"))
}
