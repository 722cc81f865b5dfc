// Dapr's JavaScript SDK (@dapr/dapr), unchanged, invokes an app through
// the sidecar named by DAPR_GRPC_PORT / DAPR_HTTP_PORT (and
// DAPR_API_TOKEN) with `client.invoker.invoke`, with each client named on
// the command line. Run by tests/tests/dapr_sdks.rs.
//
//   DIALBACK_SDK_JS=DIR node invoke.mjs APP_ID METHOD grpc,http
//
// Each client POSTs {"from": <protocol>, "n": 42} to APP_ID's METHOD.
// Prints one JSON line, {"grpc": <answer>, "http": <answer>}; exits 1
// with the error on stderr when a call fails.
import { clientFor, failer, loadDapr, runEach } from "./common.mjs";

const fail = failer("invoke.mjs");
const dapr = loadDapr(fail);
const { HttpMethod } = dapr;

const [appId, method, protocols] = process.argv.slice(2);
if (!appId || !method || !protocols) fail("usage: invoke.mjs APP_ID METHOD grpc,http");

async function run(protocol) {
  const client = clientFor(dapr, protocol);
  // start() waits for the sidecar as the SDK does (Dapr/GetMetadata over
  // gRPC, GET /v1.0/metadata over HTTP) and fails with
  // DAPR_SIDECAR_COULD_NOT_BE_STARTED when it never answers.
  await client.start();
  const answer = await client.invoker.invoke(appId, method, HttpMethod.POST, { from: protocol, n: 42 });
  await client.stop();
  return answer;
}

await runEach(protocols, run, fail);
