package opensrs_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
)

func ExampleClient() {
	// The simulator stands in for https://horizon.opensrs.net:55443/.
	sim := opensrstest.NewServer("myreseller", "fake-api-key")
	defer sim.Close()
	sim.SetBehavior("404404", opensrstest.Behavior{ErrorCode: 480})

	c, err := opensrs.New(
		opensrs.WithBaseURL(sim.URL()), // opensrs.TestURL or opensrs.LiveURL in real use
		opensrs.WithCredentials("myreseller", "fake-api-key"),
		opensrs.WithHTTPClient(sim.Client()),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()

	rep, err := c.ResendCertEmail(ctx, "1799")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(rep.ResponseCode, rep.ResponseText, rep.OrderID)

	_, err = c.Resend(ctx, providers.Request{OrderID: "404404", Action: providers.ActionResendApproveEmail})
	var apiErr *opensrs.APIError
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.Class, apiErr.Code, apiErr.Message)
	}
	fmt.Println(err)
	// Output:
	// 200 Command completed successfully. 1799
	// permanent 480 Item not found
	// opensrs: 480 Item not found (permanent)
}
