// A grpc-go client for cilia's gRPC servers (tests/unit/test_grpc_go_client.py builds and runs it):
// the transport hubble's CLI uses, with a pass-through codec so that it needs no generated code.
// The request comes in hex (serialized by the test with our protobuf classes); each response goes
// out as a hex line, then "STATUS <code> <message>". With -stats (bench.observability's follower, as
// `hubble observe -f` reads) it prints "FLOWS <n> LOST <hubble ring> <datapath>" lines instead.
package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
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
	stats := flag.Bool("stats", false, "count flows and lost events, printed every 200 ms and at the end")
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
	counts := &tally{}
	if *stats {
		go func() {
			for range time.Tick(200 * time.Millisecond) {
				counts.print()
			}
		}()
	}
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
			if *stats {
				counts.add(out)
			} else if !*quiet {
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
	if *stats {
		counts.print()
	}
	st := status.Convert(err)
	fmt.Printf("STATUS %d %s\n", uint32(st.Code()), st.Message())
	if *hold {
		_, _ = io.Copy(io.Discard, os.Stdin) // the connection stays up: a cancel is the stream's RST_STREAM alone
	}
}

// tally counts GetFlowsResponses by kind: flow (field 1), lost_events (field 3: source 1, num_events_lost 2).
type tally struct {
	mu                            sync.Mutex
	flows, lostRing, lostDatapath uint64
}

func (t *tally) print() {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Printf("FLOWS %d LOST %d %d\n", t.flows, t.lostRing, t.lostDatapath)
}

func (t *tally) add(message []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fields(message, func(number uint64, value uint64, data []byte) {
		switch number {
		case 1:
			t.flows++
		case 3:
			var source, count uint64
			fields(data, func(n uint64, v uint64, _ []byte) {
				if n == 1 {
					source = v
				} else if n == 2 {
					count = v
				}
			})
			if source == 3 { // HUBBLE_RING_BUFFER
				t.lostRing += count
			} else if source == 1 { // PERF_EVENT_RING_BUFFER
				t.lostDatapath += count
			}
		}
	})
}

// fields walks a message's top-level fields: varints give their value, length-delimited ones their bytes.
func fields(b []byte, each func(number uint64, value uint64, data []byte)) {
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return
		}
		b = b[n:]
		switch tag & 7 {
		case 0:
			v, m := binary.Uvarint(b)
			if m <= 0 {
				return
			}
			each(tag>>3, v, nil)
			b = b[m:]
		case 1:
			if len(b) < 8 {
				return
			}
			b = b[8:]
		case 2:
			l, m := binary.Uvarint(b)
			if m <= 0 || uint64(len(b)-m) < l {
				return
			}
			each(tag>>3, 0, b[m:m+int(l)])
			b = b[m+int(l):]
		case 5:
			if len(b) < 4 {
				return
			}
			b = b[4:]
		default:
			return
		}
	}
}
