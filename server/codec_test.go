package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// rawCodec sends bytes as they are: what a hostile or buggy client can put
// on the wire, which the generated client would refuse to marshal.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*(v.(*[]byte)))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}
func (rawCodec) Name() string { return "proto" }

func field(num protowire.Number, value []byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, value)
}

func TestUndecodableRequests(t *testing.T) {
	_, conn := startServer(t)
	forged := field(markerField, append(make([]byte, 16), []byte("prompt\x00forged")...))
	tests := []struct {
		name      string
		body      []byte
		code      codes.Code
		wantField string
	}{
		{"invalid UTF-8 prompt", field(1, []byte{0xff, 0xfe, 'a'}), codes.InvalidArgument, "prompt"},
		{"invalid UTF-8 negative prompt", field(2, []byte("ok\xc3\x28")), codes.InvalidArgument, "negative_prompt"},
		{"invalid UTF-8 style", append(field(3, []byte("Cinematic")), field(3, []byte{0xc0, 0xaf})...), codes.InvalidArgument, "styles"},
		{"truncated message", []byte{0x0a, 0x10, 'a'}, codes.InvalidArgument, ""},
		{"bad wire type", []byte{0x0f}, codes.InvalidArgument, ""},
		// A marker without the process's nonce is an ordinary unknown
		// field: the request is valid (and finds no workers).
		{"forged marker", append(field(1, []byte("a cat")), forged...), codes.Unavailable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{hourglassv1.GenerateService_Generate_FullMethodName, hourglassv1.GenerateService_GenerateStream_FullMethodName} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := rawCall(ctx, conn, method, tt.body)
				cancel()
				st := status.Convert(err)
				if st.Code() != tt.code {
					t.Fatalf("%s(%s) = %v; want %v", method, tt.name, err, tt.code)
				}
				if tt.code != codes.InvalidArgument {
					continue
				}
				fields := fieldsOfStatus(st)
				if len(fields) != 1 || fields[0] != tt.wantField {
					t.Fatalf("%s(%s) field violations = %q; want [%q]", method, tt.name, fields, tt.wantField)
				}
			}
		})
	}
}

func rawCall(ctx context.Context, conn *grpc.ClientConn, method string, body []byte) error {
	if method == hourglassv1.GenerateService_Generate_FullMethodName {
		var out []byte
		return conn.Invoke(ctx, method, &body, &out, grpc.ForceCodecV2(rawCodec{}))
	}
	stream, err := conn.NewStream(ctx, &hourglassv1.GenerateService_ServiceDesc.Streams[0], method, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&body); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		var out []byte
		if err := stream.RecvMsg(&out); err != nil {
			return err
		}
	}
}

func fieldsOfStatus(st *status.Status) []string {
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			fields = append(fields, fieldsOf(br)...)
		}
	}
	return fields
}
