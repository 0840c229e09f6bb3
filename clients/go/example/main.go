// Command example plans the reference query on a pdplanner server, fetches the stored plan back
// with GetPlan and prints its name alone on the first line, then the chosen deployment.
//
//	go run ./example HOST:PORT
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
	conn, err := grpc.Dial(address, grpc.WithInsecure())
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
