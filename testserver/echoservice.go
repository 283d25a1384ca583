package testserver

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
)

// Limits that keep a careless or hostile request from making the server
// allocate or loop without bound.
const (
	// MaxServerStreamCount is the largest count ServerStreamEcho accepts.
	MaxServerStreamCount = 100_000
	// MaxClientStreamMessages is the most messages ClientStreamEcho keeps;
	// one more is answered with codes.ResourceExhausted.
	MaxClientStreamMessages = 10_000
)

// echoService implements tokenrefresh.echo.v1.EchoService. Authentication
// happens in the interceptors before any method runs.
type echoService struct {
	echov1.UnimplementedEchoServiceServer
}

var _ echov1.EchoServiceServer = echoService{}

func (echoService) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	user, _ := UserFromContext(ctx)
	return &echov1.EchoResponse{Message: req.GetMessage(), User: user}, nil
}

func (echoService) ServerStreamEcho(req *echov1.ServerStreamEchoRequest, stream grpc.ServerStreamingServer[echov1.ServerStreamEchoResponse]) error {
	count := req.GetCount()
	if count < 0 || count > MaxServerStreamCount {
		return status.Errorf(codes.InvalidArgument, "testserver: count must be in [0, %d], got %d", MaxServerStreamCount, count)
	}
	failCode := codes.Code(req.GetFailCode())
	if failCode > codes.Unauthenticated {
		return status.Errorf(codes.InvalidArgument, "testserver: fail_code %d is not a gRPC status code", req.GetFailCode())
	}
	if failCode == codes.OK {
		failCode = codes.Unauthenticated
	}
	sendN := count
	failAfter := req.GetFailAfter()
	if failAfter > 0 {
		sendN = min(count, failAfter)
	}
	for i := range sendN {
		if err := stream.Send(&echov1.ServerStreamEchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
	if failAfter > 0 {
		return status.Errorf(failCode, "testserver: injected stream failure after %d messages", sendN)
	}
	return nil
}

func (echoService) ClientStreamEcho(stream grpc.ClientStreamingServer[echov1.ClientStreamEchoRequest, echov1.ClientStreamEchoResponse]) error {
	var msgs []string
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&echov1.ClientStreamEchoResponse{Count: int32(len(msgs)), Messages: msgs})
		}
		if err != nil {
			return err
		}
		if len(msgs) == MaxClientStreamMessages {
			return status.Errorf(codes.ResourceExhausted, "testserver: more than %d messages", MaxClientStreamMessages)
		}
		msgs = append(msgs, req.GetMessage())
	}
}

func (echoService) BidiStreamEcho(stream grpc.BidiStreamingServer[echov1.BidiStreamEchoRequest, echov1.BidiStreamEchoResponse]) error {
	for i := int32(0); ; i++ {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&echov1.BidiStreamEchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
}
