// Dapr's JavaScript SDK (@dapr/dapr), unchanged, saves, reads, deletes
// and transacts state through the sidecar named by DAPR_GRPC_PORT /
// DAPR_HTTP_PORT (and DAPR_API_TOKEN), with each client named on the
// command line. Run by tests/tests/dapr_sdks.rs.
//
//   DIALBACK_SDK_JS=DIR node state.mjs STORE KEY_PREFIX grpc,http
//
// Prints one JSON line, {"grpc": {...}, "http": {...}}: per client what it
// read back (values as JSON, a missing key as null); exits 1 with the
// error on stderr when a call fails.
import { createRequire } from "node:module";
import path from "node:path";

const fail = (msg) => {
  process.stderr.write(`state.mjs: ${msg}\n`);
  process.exit(1);
};
if (!process.env.DIALBACK_SDK_JS) fail("DIALBACK_SDK_JS must name the SDK's directory (scripts/sdks.sh js)");
const require = createRequire(path.join(process.env.DIALBACK_SDK_JS, "package.json"));
const { DaprClient, CommunicationProtocolEnum, LogLevel } = require("@dapr/dapr");

const [store, prefix, protocols] = process.argv.slice(2);
if (!store || !prefix || !protocols) fail("usage: state.mjs STORE KEY_PREFIX grpc,http");

// The HTTP client's save and delete report a failure in their result
// instead of throwing.
const check = (what, result) => {
  if (result && result.error) throw new Error(`${what}: ${result.error}`);
};
// A missing key reads as "" (both clients); call it null.
const read = async (client, key) => {
  const v = await client.state.get(store, key);
  return v === "" || v === undefined ? null : v;
};

async function run(protocol) {
  const communicationProtocol = { grpc: CommunicationProtocolEnum.GRPC, http: CommunicationProtocolEnum.HTTP }[protocol];
  if (communicationProtocol === undefined) throw new Error(`unknown protocol ${protocol}`);
  const client = new DaprClient({ communicationProtocol, logger: { level: LogLevel.Error } });
  const k = (n) => `${prefix}-${protocol}-${n}`;
  const out = {};
  check("save", await client.state.save(store, [
    { key: k("k1"), value: "v1" },
    { key: k("k2"), value: { n: 2, by: protocol } },
  ]));
  out.k1 = await read(client, k("k1"));
  out.k2 = await read(client, k("k2"));
  check("delete", await client.state.delete(store, k("k1")));
  out.k1_after_delete = await read(client, k("k1"));
  // One transaction: an upsert and a delete. The gRPC client sends a
  // value as its UTF-8 bytes (a string only); the HTTP client sends it
  // as JSON.
  const value = { tx: protocol };
  await client.state.transaction(store, [
    { operation: "upsert", request: { key: k("k3"), value: protocol === "grpc" ? JSON.stringify(value) : value } },
    { operation: "delete", request: { key: k("k2") } },
  ]);
  out.k2_after_tx = await read(client, k("k2"));
  out.k3_after_tx = await read(client, k("k3"));
  await client.stop();
  return out;
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
