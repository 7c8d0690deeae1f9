// loadgen drives one kind of request at a server from N connections, each on its own
// goroutine, and reports completions, errors and latency percentiles as one JSON line.
//
// Native code so that the load generator is not the bottleneck on a small machine (Python
// threads as clients spent more CPU than the server). It builds offline from Debian's
// golang-go and golang-google-grpc-dev in GOPATH mode, with no generated code: the gRPC
// request is sent as pre-encoded bytes through a pass-through codec.
//
// Protocol with the caller (bench/issuance.py): every connection does one untimed request
// (connect, TLS handshake, server warm-up), then loadgen prints "ready" and waits for a
// line on stdin; it then runs for -seconds and prints the result. The caller reads the
// server's CPU from /proc on either side of that window.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"net/http"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// rawCodec passes bytes through unchanged: the request is encoded once, by the caller.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// doer sends one request and says whether the answer is a certificate.
type doer func(ctx context.Context) error

var certMarker = []byte("-----BEGIN CERTIFICATE-----")

func grpcDoer(target, method string, body []byte, creds credentials.TransportCredentials) (doer, func(), error) {
	conn, err := grpc.Dial(target, grpc.WithTransportCredentials(creds), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		return nil, nil, err
	}
	do := func(ctx context.Context) error {
		var reply []byte
		if err := conn.Invoke(ctx, method, &body, &reply); err != nil {
			return err
		}
		if !bytes.Contains(reply, certMarker) {
			return fmt.Errorf("the answer holds no certificate")
		}
		return nil
	}
	return do, func() { conn.Close() }, nil
}

type cfsslReply struct {
	Success bool `json:"success"`
	Result  struct {
		Certificate string `json:"certificate"`
	} `json:"result"`
}

func httpDoer(url string, body []byte) (doer, func(), error) {
	// One transport per connection: a keep-alive connection of its own, like a gRPC channel.
	transport := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	client := &http.Client{Transport: transport}
	do := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, err := ioutil.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		var reply cfsslReply
		if err := json.Unmarshal(data, &reply); err != nil || !reply.Success ||
			!bytes.Contains([]byte(reply.Result.Certificate), certMarker) {
			return fmt.Errorf("HTTP %d: no certificate in the answer", resp.StatusCode)
		}
		return nil
	}
	return do, transport.CloseIdleConnections, nil
}

type result struct {
	Completed  int     `json:"completed"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error"`
	Seconds    float64 `json:"seconds"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	CPUSeconds float64 `json:"loadgen_cpu_seconds"`
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(usage.Utime) + tv(usage.Stime)
}

// percentile by nearest rank over sorted values.
func percentile(sorted []float64, fraction float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*fraction+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	mode := flag.String("mode", "grpc", "grpc (mutual TLS) or http (plain JSON POST)")
	target := flag.String("target", "", "host:port (grpc) or URL (http)")
	method := flag.String("method", "/kubeca.v1.CertificateAuthority/IssueCertificate", "gRPC method")
	bodyFile := flag.String("body", "", "file holding the encoded request")
	caFile := flag.String("ca", "", "CA bundle the server's certificate must chain to (grpc)")
	certFile := flag.String("cert", "", "client certificate (grpc)")
	keyFile := flag.String("key", "", "client key (grpc)")
	conns := flag.Int("c", 1, "concurrent connections, one request in flight on each")
	seconds := flag.Float64("seconds", 5, "length of the timed phase")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of one request")
	flag.Parse()

	body, err := ioutil.ReadFile(*bodyFile)
	if err != nil {
		fail("%v", err)
	}
	var makeDoer func() (doer, func(), error)
	switch *mode {
	case "grpc":
		pool := x509.NewCertPool()
		caPEM, err := ioutil.ReadFile(*caFile)
		if err != nil || !pool.AppendCertsFromPEM(caPEM) {
			fail("cannot read a CA certificate from %s", *caFile)
		}
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("%v", err)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}})
		makeDoer = func() (doer, func(), error) { return grpcDoer(*target, *method, body, creds) }
	case "http":
		makeDoer = func() (doer, func(), error) { return httpDoer(*target, body) }
	default:
		fail("unknown -mode %q", *mode)
	}

	doers := make([]doer, *conns)
	for i := range doers {
		do, closeFn, err := makeDoer()
		if err != nil {
			fail("connecting: %v", err)
		}
		defer closeFn()
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		err = do(ctx) // untimed warm-up on every connection
		cancel()
		if err != nil {
			fail("warm-up request: %v", err)
		}
		doers[i] = do
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail("no start signal: %v", err)
	}

	latencies := make([][]float64, *conns)
	errs := make([]int, *conns)
	firstErr := make([]string, *conns)
	var wg sync.WaitGroup
	cpuBefore := cpuSeconds()
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	for i := range doers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				began := time.Now()
				err := doers[i](ctx)
				cancel()
				if err != nil {
					if errs[i] == 0 {
						firstErr[i] = err.Error()
					}
					errs[i]++
					continue
				}
				latencies[i] = append(latencies[i], float64(time.Since(began))/1e6)
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	out := result{Seconds: elapsed, CPUSeconds: cpuSeconds() - cpuBefore}
	var all []float64
	for i := range doers {
		all = append(all, latencies[i]...)
		out.Errors += errs[i]
		if out.FirstError == "" {
			out.FirstError = firstErr[i]
		}
	}
	sort.Float64s(all)
	out.Completed = len(all)
	out.P50Ms = percentile(all, 0.50)
	out.P99Ms = percentile(all, 0.99)
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
