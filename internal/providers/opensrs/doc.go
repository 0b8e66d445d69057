// Package opensrs is the certmail client for the OpenSRS XCP API: it resends
// the certificate (fulfilment) email and the DCV approver email of trust
// service (SSL) orders.
//
// Each call builds one OPS XML envelope, signs exactly the bytes it sends with
// the X-Signature scheme (MD5 of MD5, keyed with the reseller API key), makes
// exactly one HTTPS POST and decodes the OPS reply. Success is decided by the
// reply's is_success flag, never by the HTTP status. Failures are returned as
// *APIError, classified as transient, rate-limited, permanent or
// configuration errors (see providers.Class); the client never retries.
//
// The API key is never printed: not in errors, not in String/GoString of the
// Client.
//
// The HTTP call itself (connection pool, timeouts, TLS policy, redirects,
// the 1 MiB reply cap, whether a failed request may have been sent) is
// package httpx, shared with the DigiCert client; this package keeps the
// OPS envelope, its signature and OpenSRS's error classification.
//
// Vendor documentation: https://domains.opensrs.guide/docs/resend_cert_email
// and https://domains.opensrs.guide/docs/resend_approve_email .
package opensrs
