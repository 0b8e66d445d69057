package digicert_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
)

func ExampleClient_Resend() {
	sim := digicerttest.NewServer("example-key")
	defer sim.Close()
	sim.SetBehavior("1002", digicerttest.Behavior{ErrorStatus: 404, ErrorCode: "not_found|order"})

	// In production: digicert.WithBaseURL(digicert.USURL) or EUURL.
	c, err := digicert.New(digicert.WithBaseURL(sim.URL()), digicert.WithAPIKey("example-key"))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	res, err := c.Resend(ctx, providers.Request{
		OrderID:        "1001",
		ApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}},
		Locale:         "en",
	})
	fmt.Println(res.Provider, res.StatusCode, err)

	_, err = c.Resend(ctx, providers.Request{OrderID: "1002"})
	fmt.Println(err)
	d := providers.Describe(err)
	fmt.Println(d.Class, d.Code)
	// Output:
	// digicert 204 <nil>
	// digicert: 404 not_found|order: The specified order was not found. (permanent)
	// permanent not_found|order
}

func ExampleClient_ResendEmails() {
	sim := digicerttest.NewServer("example-key")
	defer sim.Close()
	sim.SetBehavior("1003", digicerttest.Behavior{RateLimited: 1, RetryAfter: 2e9})

	c, err := digicert.New(digicert.WithBaseURL(sim.URL()), digicert.WithAPIKey("example-key"))
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.ResendEmails(context.Background(), "1003", digicert.ResendEmailsRequest{})
	var apiErr *digicert.Error
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.StatusCode, apiErr.Class, apiErr.RetryAfter, apiErr.Errors[0].Code)
	}
	resp, err := c.ResendEmails(context.Background(), "1003", digicert.ResendEmailsRequest{})
	fmt.Println(resp.StatusCode, err)
	// Output:
	// 429 rate_limited 2s request_limit_exceeded
	// 204 <nil>
}
