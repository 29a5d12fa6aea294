// A grpc-go client for cilia's gRPC servers (tests/unit/test_grpc_go_client.py builds and runs it):
// the transport hubble's CLI uses, with a pass-through codec so that it needs no generated code.
// The request comes in hex (serialized by the test with our protobuf classes); each response goes
// out as a hex line, then "STATUS <code> <message>".
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

// rawCodec takes the place of the proto codec ("proto": content-type application/grpc, as hubble sends).
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	p := v.(*[]byte)
	*p = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func main() {
	addr := flag.String("addr", "", "unix:PATH or HOST:PORT")
	method := flag.String("method", "", "/package.Service/Method")
	request := flag.String("request", "", "the request message, hex")
	stream := flag.Bool("stream", false, "a server-streaming method")
	max := flag.Int("max", 0, "cancel after this many responses (0: read to the end)")
	timeout := flag.Duration("timeout", 10*time.Second, "the call's deadline (sent as grpc-timeout)")
	hold := flag.Bool("hold", false, "keep the connection open until stdin closes")
	quiet := flag.Bool("count", false, "print only how many responses came (bench.observability)")
	flag.Parse()
	encoding.RegisterCodec(rawCodec{})
	req, err := hex.DecodeString(*request)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		if strings.HasPrefix(*addr, "unix:") {
			return d.DialContext(ctx, "unix", strings.TrimPrefix(*addr, "unix:"))
		}
		return d.DialContext(ctx, "tcp", *addr)
	}
	dialCtx, dialCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dialCancel()
	conn, err := grpc.DialContext(dialCtx, "passthrough:///cilia", grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(dial))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	got := 0
	if !*stream {
		var out []byte
		err = conn.Invoke(ctx, *method, &req, &out)
		if err == nil {
			fmt.Println(hex.EncodeToString(out))
		}
	} else {
		var s grpc.ClientStream
		s, err = conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, *method)
		if err == nil {
			err = s.SendMsg(&req)
		}
		if err == nil {
			err = s.CloseSend()
		}
		for n := 0; err == nil; {
			var out []byte
			if err = s.RecvMsg(&out); err != nil {
				break
			}
			if !*quiet {
				fmt.Println(hex.EncodeToString(out))
			}
			n++
			got = n
			if *max > 0 && n >= *max {
				cancel()
				break
			}
		}
		if err == io.EOF {
			err = nil
		}
	}
	if *quiet {
		fmt.Println("COUNT", got)
	}
	st := status.Convert(err)
	fmt.Printf("STATUS %d %s\n", uint32(st.Code()), st.Message())
	if *hold {
		_, _ = io.Copy(io.Discard, os.Stdin) // the connection stays up: a cancel is the stream's RST_STREAM alone
	}
}
