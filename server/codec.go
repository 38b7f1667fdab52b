package server

import (
	"context"
	"crypto/rand"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// grpc-go answers a request it cannot decode (malformed bytes, a string
// field holding invalid UTF-8) with INTERNAL, and it decodes a unary request
// before any interceptor runs. But undecodable input is the caller's error:
// hourglass promises INVALID_ARGUMENT with the field named. So the server's
// codec does not fail: it leaves the message empty with a marker in its
// unknown fields, and the decodeErrors interceptor turns the marker into
// INVALID_ARGUMENT before validation. The marker carries a per-process
// random nonce, so a caller cannot forge one.

// markerField is the field number of the marker: the largest valid one.
const markerField = protowire.Number(1<<29 - 1)

var markerNonce = func() []byte {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return b
}()

// lenientCodec is the proto codec, except for what Unmarshal does on error.
type lenientCodec struct{ encoding.CodecV2 }

func newLenientCodec() lenientCodec {
	return lenientCodec{encoding.GetCodecV2(protocodec.Name)}
}

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	raw := data.Materialize()
	proto.Reset(m)
	desc := describeDecodeError(m.ProtoReflect().Descriptor(), raw, err)
	marker := protowire.AppendTag(nil, markerField, protowire.BytesType)
	marker = protowire.AppendBytes(marker, append(append([]byte(nil), markerNonce...), desc...))
	m.ProtoReflect().SetUnknown(marker)
	return nil
}

// describeDecodeError names the field at fault when it can: a top-level
// string (or repeated string) field that is not valid UTF-8.
func describeDecodeError(md protoreflect.MessageDescriptor, raw []byte, err error) string {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			break
		}
		raw = raw[n:]
		m := protowire.ConsumeFieldValue(num, typ, raw)
		if m < 0 {
			break
		}
		if fd := md.Fields().ByNumber(num); fd != nil && fd.Kind() == protoreflect.StringKind && typ == protowire.BytesType {
			if s, _ := protowire.ConsumeBytes(raw[:m]); !utf8.Valid(s) {
				return string(fd.Name()) + "\x00is not valid UTF-8"
			}
		}
		raw = raw[m:]
	}
	return "\x00the request is not a valid " + string(md.FullName()) + " message: " + err.Error()
}

// decodeError returns the caller's INVALID_ARGUMENT when the codec marked
// the message undecodable, nil otherwise.
func decodeError(req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	unknown := m.ProtoReflect().GetUnknown()
	for len(unknown) > 0 {
		num, typ, n := protowire.ConsumeTag(unknown)
		if n < 0 {
			return nil
		}
		unknown = unknown[n:]
		l := protowire.ConsumeFieldValue(num, typ, unknown)
		if l < 0 {
			return nil
		}
		if num == markerField && typ == protowire.BytesType {
			payload, _ := protowire.ConsumeBytes(unknown[:l])
			if len(payload) >= len(markerNonce) && string(payload[:len(markerNonce)]) == string(markerNonce) {
				field, desc, _ := strings.Cut(string(payload[len(markerNonce):]), "\x00")
				return invalidArgument(fieldViolation(field, desc))
			}
		}
		unknown = unknown[l:]
	}
	return nil
}

func unaryDecodeErrors(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := decodeError(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func streamDecodeErrors(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, decodeCheckedStream{ss})
}

type decodeCheckedStream struct{ grpc.ServerStream }

func (s decodeCheckedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return decodeError(m)
}
