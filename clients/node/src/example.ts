// Plans the reference query on a pdplanner server, fetches the stored plan back with GetPlan and
// prints its name alone on the first line, then the chosen deployment.
//
//   npm ci && npm run example -- HOST:PORT
//
// It reads the variables the Python client and the CLI read: PDPLANNER_TOKEN (or
// PDPLANNER_TOKEN_FILE) is sent as "authorization: Bearer TOKEN" on every call;
// PDPLANNER_TLS_CA_FILE makes the connection TLS, trusting that CA (PDPLANNER_TLS=1: the
// system's roots), and PDPLANNER_TLS_CLIENT_CERT_FILE with PDPLANNER_TLS_CLIENT_KEY_FILE show a
// client certificate (mutual TLS). With none set it connects in plaintext and sends no token.
import { readFileSync } from "node:fs";
import type { SecureClientSessionOptions } from "node:http2";

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";

import { ModeSchema } from "./pdplanner/v1/common_pb.js";
import { PlanRequestSchema, PoolRoleSchema, type PlanResponse } from "./pdplanner/v1/plan_pb.js";
import { PlannerService } from "./pdplanner/v1/planner_service_pb.js";

// A double in its shortest round-trip form, as the Go and Python clients print it.
const num = (x: number): string => String(x);

const env = (name: string): string | undefined => process.env[name] || undefined;

// The token of PDPLANNER_TOKEN, else the first line that is not blank of PDPLANNER_TOKEN_FILE.
function tokenFromEnv(): string | undefined {
  const path = env("PDPLANNER_TOKEN_FILE");
  if (env("PDPLANNER_TOKEN") !== undefined || path === undefined) {
    return env("PDPLANNER_TOKEN");
  }
  const token = readFileSync(path, "utf8")
    .split("\n")
    .map((line) => line.trim())
    .find((line) => line !== "");
  if (token === undefined) {
    throw new Error(`token file ${path} is empty`);
  }
  return token;
}

// TLS options when PDPLANNER_TLS is 1/true/yes/on or any of its files is set, else undefined.
function tlsFromEnv(): SecureClientSessionOptions | undefined {
  const ca = env("PDPLANNER_TLS_CA_FILE");
  const cert = env("PDPLANNER_TLS_CLIENT_CERT_FILE");
  const key = env("PDPLANNER_TLS_CLIENT_KEY_FILE");
  const wanted = ["1", "true", "yes", "on"].includes((env("PDPLANNER_TLS") ?? "").toLowerCase());
  if (!wanted && ca === undefined && cert === undefined && key === undefined) {
    return undefined;
  }
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error("PDPLANNER_TLS_CLIENT_CERT_FILE and PDPLANNER_TLS_CLIENT_KEY_FILE go together");
  }
  return {
    ca: ca === undefined ? undefined : readFileSync(ca), // undefined: Node's own roots
    cert: cert === undefined ? undefined : readFileSync(cert),
    key: key === undefined ? undefined : readFileSync(key),
  };
}

async function main(address: string): Promise<void> {
  const token = tokenFromEnv();
  const tls = tlsFromEnv();
  const bearer: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return await next(req);
  };
  const transport = createGrpcTransport({
    baseUrl: `${tls === undefined ? "http" : "https"}://${address}`,
    nodeOptions: tls,
    interceptors: token === undefined ? [] : [bearer],
  });
  const client = createClient(PlannerService, transport);
  const signal = AbortSignal.timeout(120_000); // the whole run: retries, Plan and GetPlan

  // The reference query: Llama-3.1-70B on 16 x H100, ISL 4000, OSL 500, TTFT 1000 ms, TPOT 20 ms.
  const request = create(PlanRequestSchema, {
    requestId: `node-example-${Date.now()}-${process.pid}`,
    model: "llama-3.1-70b",
    gpu: "h100-sxm",
    gpus: 16,
    traffic: [{ isl: 4000, osl: 500 }],
    slo: { ttftMs: 1000, tpotMs: 20 },
  });
  // A server that is still starting answers UNAVAILABLE; the same request_id makes a retry safe.
  let planned: PlanResponse | undefined;
  let unavailable: ConnectError | undefined;
  for (let delayMs = 250; planned === undefined; delayMs = Math.min(2 * delayMs, 4000)) {
    try {
      planned = await client.plan(request, { signal });
    } catch (err) {
      if (signal.aborted && unavailable !== undefined) {
        throw unavailable; // say why the server never answered, not only that time ran out
      }
      if (!(err instanceof ConnectError && err.code === Code.Unavailable)) {
        throw err;
      }
      unavailable = err;
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
  const stored = await client.getPlan({ name: planned.plan?.name ?? "" }, { signal });
  const plan = stored.plan;
  if (plan === undefined) {
    throw new Error("GetPlan returned no plan");
  }
  console.log(plan.name);
  const best = plan.result?.best;
  if (best === undefined) {
    console.log(`no deployment meets the SLO: ${plan.result?.reason ?? ""}`);
    return;
  }
  console.log(
    `${ModeSchema.value[best.mode]?.name} on ${best.gpus} GPUs: TTFT ${num(best.ttftMs)} ms, ` +
      `TPOT ${num(best.tpotMs)} ms, ${num(best.tokensPerSPerGpu)} tokens/s/GPU, ` +
      `${num(best.tokensPerSPerUser)} tokens/s/user, ${num(best.requestsPerS)} req/s`,
  );
  for (const pool of best.pools) {
    const chunk = pool.chunkTokens === undefined ? "" : `, chunk ${pool.chunkTokens} tokens`;
    console.log(
      `${PoolRoleSchema.value[pool.role]?.name}: ${pool.workers} x ${pool.gpu} TP${pool.tp} ` +
        `PP${pool.pp} EP${pool.ep} attention-DP${pool.attentionDp}, batch ${pool.batch}${chunk}`,
    );
  }
}

const args = process.argv.slice(2);
if (args.length !== 1) {
  console.error("usage: npm run example -- HOST:PORT");
  process.exit(2);
}
main(args[0] as string).catch((err: unknown) => {
  console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
