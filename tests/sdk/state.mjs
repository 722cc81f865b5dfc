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
import { clientFor, failer, loadDapr, runEach } from "./common.mjs";

const fail = failer("state.mjs");
const dapr = loadDapr(fail);

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
  const client = clientFor(dapr, protocol);
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

await runEach(protocols, run, fail);
