// Package api holds the HTTP API's contract, api/openapi.yaml (OpenAPI
// 3.1), embedded so that cmd/api serves the very file the tests validate
// against (GET /v1/openapi.yaml). The server is internal/api.
package api

import _ "embed"

// OpenAPI is api/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
