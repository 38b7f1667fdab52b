package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// runEcho is the baseline of figure 1: a bare grpc-go server (no
// interceptors, no stats handler, default options) whose unary Generate
// answers at once with a canned response as large as hourglassd's answer
// to the same request, so that both move the same bytes over the same
// client connection. The harness starts it as `hourglass-bench echo-server`.
//
// With --forward it is instead a bare relay: each Generate is passed on
// to the echo server at that address (a Unix socket, like hourglassd's
// workers) over one shared connection and its answer returned. Relay plus
// echo is the second baseline: two bare gRPC hops and three processes, the
// shape of hourglassd and a worker with none of their work.
func runEcho(args []string) int {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "`address`: host:port, or unix:PATH")
	imageBytes := fs.Int("image-bytes", 1024, "size of the canned image")
	forward := fs.String("forward", "", "relay every call to the echo server at this `address` (unix:PATH) instead of answering")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	network, addr := "tcp", *listen
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	lis, err := net.Listen(network, addr)
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
	if *forward != "" {
		cc, err := grpc.NewClient(*forward, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cc.Close()
		hourglassv1.RegisterGenerateServiceServer(srv, &relayService{backend: hourglassv1.NewGenerateServiceClient(cc)})
	} else {
		hourglassv1.RegisterGenerateServiceServer(srv, &echoService{resp: resp})
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; srv.Stop() }()
	shown := lis.Addr().String()
	if network == "unix" {
		shown = "unix:" + shown
	}
	line, _ := json.Marshal(map[string]string{"msg": "serving", "addr": shown})
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

// relayService passes each call on to the backend, deadline included.
type relayService struct {
	hourglassv1.UnimplementedGenerateServiceServer
	backend hourglassv1.GenerateServiceClient
}

func (s *relayService) Generate(ctx context.Context, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	return s.backend.Generate(ctx, req)
}
