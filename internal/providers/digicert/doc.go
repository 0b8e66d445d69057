// Package digicert is a client for the DigiCert CertCentral Services API v2,
// limited to what certmail needs: resending the domain-control-validation
// (DCV) emails of an order with
//
//	PUT {base}order/certificate/{order_id}/resend-emails
//
// authenticated by the X-DC-DEVKEY header. Each call makes exactly one HTTP
// request and never retries; failures are returned as *Error, which carries
// every error the API reported and a providers.Class that tells the caller
// whether to retry, wait, dead-letter or alert. The client implements
// providers.Resender.
//
// The HTTP call itself (connection pool, timeouts, TLS policy, redirects,
// the 1 MiB reply cap, whether a failed request may have been sent) is
// package httpx, shared with the OpenSRS client; this package keeps the
// JSON wire format and DigiCert's error classification.
//
// Vendor documentation:
// https://dev.digicert.com/en/certcentral-apis/services-api/orders/dv-ssl--resend-emails.html
//
// The digicerttest subpackage provides an in-process simulator of the API
// for tests, demos and benchmarks.
package digicert
