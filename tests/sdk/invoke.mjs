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
import { createRequire } from "node:module";
import path from "node:path";

const fail = (msg) => {
  process.stderr.write(`invoke.mjs: ${msg}\n`);
  process.exit(1);
};
if (!process.env.DIALBACK_SDK_JS) fail("DIALBACK_SDK_JS must name the SDK's directory (scripts/sdks.sh js)");
const require = createRequire(path.join(process.env.DIALBACK_SDK_JS, "package.json"));
const { DaprClient, CommunicationProtocolEnum, HttpMethod, LogLevel } = require("@dapr/dapr");

const [appId, method, protocols] = process.argv.slice(2);
if (!appId || !method || !protocols) fail("usage: invoke.mjs APP_ID METHOD grpc,http");

async function run(protocol) {
  const communicationProtocol = { grpc: CommunicationProtocolEnum.GRPC, http: CommunicationProtocolEnum.HTTP }[protocol];
  if (communicationProtocol === undefined) throw new Error(`unknown protocol ${protocol}`);
  const client = new DaprClient({ communicationProtocol, logger: { level: LogLevel.Error } });
  // start() waits for the sidecar as the SDK does (Dapr/GetMetadata over
  // gRPC, GET /v1.0/metadata over HTTP) and fails with
  // DAPR_SIDECAR_COULD_NOT_BE_STARTED when it never answers.
  await client.start();
  const answer = await client.invoker.invoke(appId, method, HttpMethod.POST, { from: protocol, n: 42 });
  await client.stop();
  return answer;
}

try {
  const result = {};
  for (const p of protocols.split(",")) {
    try {
      result[p] = await run(p);
    } catch (e) {
      throw new Error(`${p} client: ${e?.stack ?? e}`);
    }
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
} catch (e) {
  fail(String(e));
}
