package client_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// Generate runs a job and returns its images. The seed is fixed by the
// caller here; without one the client picks it, and the stats say which.
func Example() {
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Generate(ctx, &hourglassv1.GenerateRequest{
		Prompt: "a lighthouse at dusk",
		Width:  proto.Uint32(768), Height: proto.Uint32(512),
		ImageCount: proto.Uint32(2),
		Seed:       proto.Uint64(42),
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, img := range resp.GetImages() {
		fmt.Printf("image %d: %s, seed %d\n", img.GetIndex(), img.GetMimeType(), img.GetSeed())
	}
	fmt.Println("seed of the job:", resp.GetStats().GetSeed())
	// Output:
	// image 0: image/png, seed 42
	// image 1: image/png, seed 43
	// seed of the job: 42
}

// Several replicas in one target: calls are balanced round-robin over the
// ones whose health is SERVING, and a call that fails UNAVAILABLE on one
// (killed, draining, worker crashed) is retried on another with the same
// seed.
func ExampleNew_replicas() {
	c, err := client.New("gpu1.internal:50051,gpu2.internal:50051,gpu3.internal:50051",
		client.WithCAFile("/etc/hourglass/ca.pem"),
		client.WithToken(os.Getenv("HOURGLASS_TOKEN")),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Mutual TLS: the client presents a certificate, whose common name
// hourglassd (with tls.client_ca set) takes as the caller's tenant.
func ExampleNew_mutualTLS() {
	c, err := client.New("dns:///hourglass.internal:50051",
		client.WithCAFile("/etc/hourglass/ca.pem"),
		client.WithClientCertificate("/etc/hourglass/client.pem", "/etc/hourglass/client-key.pem"),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Inside a service mesh, the sidecar on loopback encrypts the hop: plain
// text to it, and the token allowed over plain text.
func ExampleNew_meshSidecar() {
	c, err := client.New("127.0.0.1:15001",
		client.WithInsecure(),
		client.WithToken(os.Getenv("HOURGLASS_TOKEN")),
		client.AllowTokenOverPlaintext(),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// GenerateStream yields the job's events as they come; stopping the loop
// cancels the job.
func ExampleClient_GenerateStream() {
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &hourglassv1.GenerateRequest{Prompt: "a red fox in the snow", Seed: proto.Uint64(7)}
	for ev, err := range c.GenerateStream(ctx, req) {
		if err != nil {
			log.Fatal(err)
		}
		switch e := ev.GetEvent().(type) {
		case *hourglassv1.GenerateEvent_Queued_:
			fmt.Println("queued, position", e.Queued.GetPosition())
		case *hourglassv1.GenerateEvent_Started_:
			fmt.Println("started, seed", e.Started.GetSeed())
		case *hourglassv1.GenerateEvent_Progress_:
			fmt.Printf("%.0f%%\n", e.Progress.GetPercent())
		case *hourglassv1.GenerateEvent_Image:
			fmt.Println("image", e.Image.GetIndex(), e.Image.GetMimeType())
		case *hourglassv1.GenerateEvent_Done_:
			fmt.Println("done,", e.Done.GetStats().GetStepsDone(), "steps")
		}
	}
	// Output:
	// queued, position 1
	// queued, position 0
	// started, seed 7
	// 25%
	// image 0 image/png
	// done, 4 steps
}

// GenerateWithProgress streams the job, reports each event, and returns the
// images and stats as Generate does.
func ExampleClient_GenerateWithProgress() {
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.GenerateWithProgress(ctx, &hourglassv1.GenerateRequest{Prompt: "a blue whale", Seed: proto.Uint64(1)},
		func(ev *hourglassv1.GenerateEvent) {
			if p := ev.GetProgress(); p != nil {
				fmt.Printf("step %d/%d\n", p.GetStep(), p.GetTotalSteps())
			}
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(resp.GetImages()), "image(s) on worker", resp.GetStats().GetWorkerId())
	// Output:
	// step 1/4
	// 1 image(s) on worker w0
}

// A busy server answers RESOURCE_EXHAUSTED with the time to wait. (The
// examples' stand-in server answers this prompt as an overloaded
// hourglassd would.)
func ExampleIsOverloaded() {
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "overloaded"})
	if wait, ok := client.IsOverloaded(err); ok {
		fmt.Printf("%s; try again in %v\n", client.Reason(err), wait)
	}
	// Output: OVERLOADED; try again in 2s
}

// An invalid request lists what is wrong, field by field.
func ExampleFieldViolations() {
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "invalid", Width: proto.Uint32(100), ImageCount: proto.Uint32(64)})
	for _, v := range client.FieldViolations(err) {
		fmt.Printf("%s: %s\n", v.GetField(), v.GetDescription())
	}
	// Output:
	// width: must be a multiple of 8
	// image_count: must be at most 32
}

// How to act on a failed call.
func ExampleIsRetryable() {
	c, err := client.New(addr, client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "too short"})
	switch {
	case err == nil:
		fmt.Println("ok")
	case client.IsDeadlineExceeded(err):
		fmt.Println("out of time:", client.Reason(err))
	case client.IsRetryable(err):
		fmt.Println("try again later, with the same seed")
	default:
		fmt.Println("failed:", client.Code(err))
	}
	// Output: out of time: DEADLINE_TOO_SHORT
}
