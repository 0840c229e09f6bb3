// Command example plans the reference query on a pdplanner server, fetches the stored plan back
// with GetPlan and prints its name alone on the first line, then the chosen deployment.
//
//	go run ./example HOST:PORT
//
// It reads the variables the Python client and the CLI read: PDPLANNER_TOKEN (or
// PDPLANNER_TOKEN_FILE) is sent as "authorization: Bearer TOKEN" on every call;
// PDPLANNER_TLS_CA_FILE makes the connection TLS, trusting that CA (PDPLANNER_TLS=1: the
// system's roots), and PDPLANNER_TLS_CLIENT_CERT_FILE with PDPLANNER_TLS_CLIENT_KEY_FILE show a
// client certificate (mutual TLS). With none set it connects in plaintext and sends no token.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pdplannerv1 "pdplanner/clients/go/pdplanner/v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: example HOST:PORT")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(address string) error {
	options, err := dialOptionsFromEnv()
	if err != nil {
		return err
	}
	conn, err := grpc.Dial(address, options...)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pdplannerv1.NewPlannerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// The reference query: Llama-3.1-70B on 16 x H100, ISL 4000, OSL 500, TTFT 1000 ms, TPOT 20 ms.
	request := &pdplannerv1.PlanRequest{
		RequestId: fmt.Sprintf("go-example-%d", time.Now().UnixNano()),
		Model:     "llama-3.1-70b",
		Gpu:       "h100-sxm",
		Gpus:      16,
		Traffic:   []*pdplannerv1.Workload{{Isl: 4000, Osl: 500}},
		Slo:       &pdplannerv1.Slo{TtftMs: 1000, TpotMs: 20},
	}
	// A server that is still starting answers UNAVAILABLE; the same request_id makes a retry safe.
	var planned *pdplannerv1.PlanResponse
	for delay := 250 * time.Millisecond; ; delay *= 2 {
		planned, err = client.Plan(ctx, request, grpc.WaitForReady(true))
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
		time.Sleep(min(delay, 4*time.Second))
	}
	if err != nil {
		return fmt.Errorf("Plan: %w", err)
	}
	stored, err := client.GetPlan(ctx, &pdplannerv1.GetPlanRequest{Name: planned.GetPlan().GetName()})
	if err != nil {
		return fmt.Errorf("GetPlan: %w", err)
	}
	plan := stored.GetPlan()
	fmt.Println(plan.GetName())
	best := plan.GetResult().GetBest()
	if best == nil {
		fmt.Println("no deployment meets the SLO:", plan.GetResult().GetReason())
		return nil
	}
	fmt.Printf("%s on %d GPUs: TTFT %s ms, TPOT %s ms, %s tokens/s/GPU, %s tokens/s/user, %s req/s\n",
		best.GetMode(), best.GetGpus(), num(best.GetTtftMs()), num(best.GetTpotMs()),
		num(best.GetTokensPerSPerGpu()), num(best.GetTokensPerSPerUser()), num(best.GetRequestsPerS()))
	for _, pool := range best.GetPools() {
		fmt.Printf("%s: %d x %s TP%d PP%d EP%d attention-DP%d, batch %d",
			pool.GetRole(), pool.GetWorkers(), pool.GetGpu(), pool.GetTp(), pool.GetPp(), pool.GetEp(),
			pool.GetAttentionDp(), pool.GetBatch())
		if pool.ChunkTokens != nil {
			fmt.Printf(", chunk %d tokens", pool.GetChunkTokens())
		}
		fmt.Println()
	}
	return nil
}

// bearer sends a token as "authorization: Bearer TOKEN" metadata on every call. It does not
// demand TLS, as the server on loopback accepts tokens in plaintext; elsewhere use TLS.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// dialOptionsFromEnv gives the transport and call credentials of the PDPLANNER_TOKEN* and
// PDPLANNER_TLS* variables, as pdplanner.client.credentials_from_env reads them: TLS is on when
// PDPLANNER_TLS is 1/true/yes/on or any of its files is set; an unreadable file is an error.
func dialOptionsFromEnv() ([]grpc.DialOption, error) {
	var options []grpc.DialOption
	token := os.Getenv("PDPLANNER_TOKEN")
	if path := os.Getenv("PDPLANNER_TOKEN_FILE"); token == "" && path != "" {
		text, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		// The first line that is not blank, without surrounding blanks.
		for _, line := range strings.Split(string(text), "\n") {
			if token = strings.TrimSpace(line); token != "" {
				break
			}
		}
		if token == "" {
			return nil, fmt.Errorf("token file %s is empty", path)
		}
	}
	if token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearer(token)))
	}

	caFile := os.Getenv("PDPLANNER_TLS_CA_FILE")
	certFile := os.Getenv("PDPLANNER_TLS_CLIENT_CERT_FILE")
	keyFile := os.Getenv("PDPLANNER_TLS_CLIENT_KEY_FILE")
	switch strings.ToLower(os.Getenv("PDPLANNER_TLS")) {
	case "1", "true", "yes", "on":
	default:
		if caFile == "" && certFile == "" && keyFile == "" {
			return append(options, grpc.WithInsecure()), nil
		}
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12} // RootCAs nil: the system's roots
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New(
			"PDPLANNER_TLS_CLIENT_CERT_FILE and PDPLANNER_TLS_CLIENT_KEY_FILE go together")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return append(options, grpc.WithTransportCredentials(credentials.NewTLS(config))), nil
}

func min(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// num prints a double in its shortest round-trip form, as the Python and TypeScript clients do.
func num(x float64) string {
	return strconv.FormatFloat(x, 'f', -1, 64)
}
