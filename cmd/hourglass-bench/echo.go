package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// runEcho is the baseline of figure 1: a bare grpc-go server (no
// interceptors, no stats handler, default options) whose unary Generate
// answers at once with a canned response as large as hourglassd's answer
// to the same request, so that both move the same bytes over the same
// client connection. The harness starts it as `hourglass-bench echo-server`.
func runEcho(args []string) int {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	imageBytes := fs.Int("image-bytes", 1024, "size of the canned image")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp := &hourglassv1.GenerateResponse{
		Images: []*hourglassv1.Image{{Data: make([]byte, *imageBytes), MimeType: "image/png", Seed: 1, Width: 64, Height: 64}},
		Stats: &hourglassv1.GenerateStats{QueueWait: durationpb.New(0), RunTime: durationpb.New(0),
			StepsDone: 1, StepsTotal: 1, WorkerId: "echo", Seed: 1, Model: "echo"},
	}
	srv := grpc.NewServer()
	hourglassv1.RegisterGenerateServiceServer(srv, &echoService{resp: resp})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; srv.Stop() }()
	line, _ := json.Marshal(map[string]string{"msg": "serving", "addr": lis.Addr().String()})
	fmt.Fprintln(os.Stderr, string(line))
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type echoService struct {
	hourglassv1.UnimplementedGenerateServiceServer
	resp *hourglassv1.GenerateResponse
}

func (s *echoService) Generate(context.Context, *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	return s.resp, nil
}
